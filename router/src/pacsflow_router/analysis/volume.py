"""Load a complete spooled study into series of sorted, decoded slices (:class:`domain.Study`).

Pixel data is decoded with pydicom's pixel-data plugins (numpy, pylibjpeg, pyjpegls, ...), so every
transfer syntax the SCP accepts (uncompressed, RLE, JPEG baseline/lossless, JPEG-LS, JPEG 2000) reaches
the model. Headers are kept without their pixel data. Optional attributes may be missing: slices are
ordered along the slice normal when every slice has Image Position/Orientation (Patient), otherwise by
Instance Number, otherwise in spool order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .. import domain
from ..errors import UnparseableInstanceError

__all__ = ["load_study", "slice_normal", "sort_slices"]

log = logging.getLogger(__name__)


def slice_normal(header: Dataset) -> np.ndarray | None:
    """The unit normal of an image plane (row direction x column direction), or None without IOP.

    PS3.3 C.7.6.2.1.1: the cross product of the row and column direction cosines points along
    increasing slice position.
    """
    iop = header.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    row, col = np.asarray(iop[:3], dtype=float), np.asarray(iop[3:], dtype=float)
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    return normal / norm if norm > 1e-6 else None


def _position(header: Dataset) -> np.ndarray | None:
    ipp = header.get("ImagePositionPatient")
    if ipp is None or len(ipp) != 3:
        return None
    return np.asarray(ipp, dtype=float)


def sort_slices(slices: list[domain.Slice]) -> list[domain.Slice]:
    """Slices in order along the normal of the first slice; falls back to InstanceNumber, then input order.

    Parameters
    ----------
    slices : list of domain.Slice
        Slices of one series, in any order.

    Returns
    -------
    list of domain.Slice
        A new list, sorted (stable).
    """
    if not slices:
        return []
    normal = slice_normal(slices[0].header)
    positions = [_position(s.header) for s in slices]
    known = [p for p in positions if p is not None]
    if normal is not None and len(known) == len(positions):
        keys = [float(np.dot(p, normal)) for p in known]
        # Distinct positions only: duplicates (e.g. two acquisitions) are ordered by InstanceNumber next.
        order = sorted(range(len(slices)), key=lambda i: (keys[i], _instance_number(slices[i].header), i))
        return [slices[i] for i in order]
    order = sorted(range(len(slices)), key=lambda i: (_instance_number(slices[i].header), i))
    return [slices[i] for i in order]


def _instance_number(header: Dataset) -> int:
    try:
        return int(header.get("InstanceNumber") or 0)
    except (TypeError, ValueError):
        return 0


def _frames(ds: Dataset) -> Iterable[np.ndarray]:
    """The 2-D stored-value images of a dataset (one per frame), greyscale."""
    arr = ds.pixel_array  # stored values; HU rescale happens in preprocessing
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples > 1:
        # Colour images are not what the CT models expect, but must not break loading: use luminance-ish mean.
        arr = arr.mean(axis=-1)
    if arr.ndim == 2:
        yield arr
    elif arr.ndim == 3:
        yield from arr
    else:
        raise ValueError(f"unexpected pixel array shape {arr.shape}")


def load_study(ref: domain.StudyRef) -> domain.Study:
    """Read, group, sort and decode the instances of a spooled study.

    Parameters
    ----------
    ref : domain.StudyRef
        The study and its spooled instance files.

    Returns
    -------
    domain.Study
        Series (in order of first appearance) with slices sorted along the normal; headers carry no
        pixel data. Instances without pixel data (e.g. SR, presentation states) are skipped.

    Raises
    ------
    UnparseableInstanceError
        No instance of the study could be read and decoded as an image.
    """
    series: dict[str, domain.Series] = {}
    first_header: Dataset | None = None
    skipped = 0
    for index, path in enumerate(ref.paths):
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            # The spool only holds instances that parsed at ingest; a failure here is disk-level damage.
            log.warning("study %s: instance %d unreadable (%s), skipped", ref.key, index, type(exc).__name__)
            skipped += 1
            continue
        if first_header is None:
            first_header = ds
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            continue
        try:
            frames = list(_frames(ds))
        except (ValueError, NotImplementedError, RuntimeError, AttributeError, TypeError) as exc:
            log.warning("study %s: instance %d pixel data not decodable (%s: %s), skipped",
                        ref.key, index, type(exc).__name__, exc)
            skipped += 1
            continue
        for name in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if name in ds:
                del ds[name]
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if uid not in series:
            series[uid] = domain.Series(
                series_uid=uid,
                modality=str(ds.get("Modality", "") or ""),
                body_part=str(ds.get("BodyPartExamined", "") or ""),
                description=str(ds.get("SeriesDescription", "") or ""),
            )
        series[uid].slices.extend(domain.Slice(header=ds, pixels=np.ascontiguousarray(f)) for f in frames)
    if first_header is None or not series:
        raise UnparseableInstanceError(
            f"study {ref.key}: none of its {len(ref.paths)} instances could be decoded as an image "
            f"({skipped} unreadable); check the spool files and the pixel-data plugins (pylibjpeg, pyjpegls)"
        )
    for s in series.values():
        s.slices = sort_slices(s.slices)
    return domain.Study(ref=ref, first_header=first_header, series=list(series.values()))
