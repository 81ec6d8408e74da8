"""Load a complete spooled study into series of sorted, decoded slices (:class:`domain.Study`).

Pixel data is decoded with pydicom's pixel-data plugins (numpy, pylibjpeg, pyjpegls, ...), so every
transfer syntax the SCP accepts (uncompressed, RLE, JPEG baseline/lossless, JPEG-LS, JPEG 2000) reaches
the model. Headers are kept without their pixel data. Optional attributes may be missing: slices are
ordered along the slice normal when every slice has Image Position/Orientation (Patient), otherwise by
Instance Number, otherwise in spool order.

Real scanners send more than single-frame images of complete series:

- multi-frame images (Enhanced CT/MR, Legacy Converted Enhanced CT/MR) put rescale, geometry and spacing in
  the Shared and Per-frame Functional Groups (PS3.3 C.7.6.16); each frame becomes a slice whose header is a
  per-frame view carrying them at the top level, where the rest of the pipeline reads them;
- partial series (an instance whose pixel data does not decode, a slice never sent) are loaded around the
  gap, and the series records what was skipped and how many images are missing, for the acceptance criteria,
  the SR and the audit to act on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pixel_array

from .. import domain
from ..errors import UnparseableInstanceError

__all__ = ["DecodedInstance", "decode_instance", "frame_headers", "load_study", "missing_images", "slice_normal",
           "sort_slices"]

log = logging.getLogger(__name__)


def slice_normal(header: Dataset) -> np.ndarray | None:
    """The unit normal of an image plane (row direction x column direction), or None without IOP.

    PS3.3 C.7.6.2.1.1: the cross product of the row and column direction cosines points along
    increasing slice position.
    """
    iop = _floats(header, "ImageOrientationPatient", 6)
    if iop is None:
        return None
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    return normal / norm if norm > 1e-6 else None


def _position(header: Dataset) -> np.ndarray | None:
    return _floats(header, "ImagePositionPatient", 3)


def _floats(header: Dataset, keyword: str, count: int) -> np.ndarray | None:
    """A DS attribute's ``count`` values as floats; None when absent, of another length or not numbers (a received
    header can hold anything there: fuzzing found '\\x00.0', tests/unit/pacsflow_router/test_fuzz_dicom.py)."""
    try:
        values = header.get(keyword)
        if values is None or isinstance(values, (str, bytes)) or len(values) != count:
            return None
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return None


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


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Functional group macros (PS3.3 C.7.6.16) whose attributes become the per-frame view's top-level attributes:
# sequence keyword -> attributes copied from its one item. Per-frame groups override shared ones (C.7.6.16.1).
_FRAME_GROUPS: dict[str, tuple[str, ...]] = {
    "PlanePositionSequence": ("ImagePositionPatient",),
    "PlaneOrientationSequence": ("ImageOrientationPatient",),
    "PixelMeasuresSequence": ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"),
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth"),
}
# Frame Type (CT/MR Image Frame Type macros) is the per-frame Image Type (PS3.3 C.8.15.3.1, C.8.13.5.1).
_FRAME_TYPE_GROUPS = ("CTImageFrameTypeSequence", "MRImageFrameTypeSequence")


class DecoderPanicError(RuntimeError):
    """A pixel-data decoder written in Rust (pylibjpeg-rle) panicked on damaged data."""


@contextmanager
def _panics_as_errors() -> Iterator[None]:
    """Turn pyo3's ``PanicException`` into :class:`DecoderPanicError`.

    pyo3 makes a Rust panic a ``BaseException`` subclass (so ``except Exception`` misses it and it would end the
    pipeline thread), one class per extension module and not importable by name: it is recognised by its name.
    Fuzzing found it (tests/unit/pacsflow_router/test_fuzz_dicom.py: RLE segments that index past their end).
    """
    try:
        yield
    except BaseException as exc:
        if type(exc).__name__ == "PanicException":
            raise DecoderPanicError(f"pixel data decoder panicked: {exc}") from None
        raise


def _frames(ds: Dataset) -> list[np.ndarray]:
    """The 2-D stored-value images of a dataset (one per frame), greyscale."""
    with _panics_as_errors():
        arr = ds.pixel_array  # stored values; HU rescale happens in preprocessing
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples > 1:
        # Colour images are not what the CT models expect, but must not break loading: use luminance-ish mean.
        arr = arr.mean(axis=-1)
    if arr.ndim == 2:
        return [arr]
    if arr.ndim == 3:
        return list(arr)
    raise ValueError(f"unexpected pixel array shape {arr.shape}")


# What pydicom and its decoder plugins raise on damaged or unsupported pixel data: almost anything (ValueError,
# RuntimeError, IndexError, KeyError, StopIteration from a frame generator short of fragments, struct.error, ...;
# fuzzing found StopIteration after this listed seven types). Each means "not decodable" for this instance; a Rust
# decoder's panic is made a RuntimeError first (_panics_as_errors).
_DECODE_ERRORS: tuple[type[Exception], ...] = (Exception,)


def _frame_by_frame(ds: Dataset) -> list[np.ndarray | None]:
    """Each frame decoded alone (None where that frame fails): compressed frames are independent fragments."""
    out: list[np.ndarray | None] = []
    for index in range(_number_of_frames(ds)):
        try:
            with _panics_as_errors():
                arr = pixel_array(ds, index=index)
        except _DECODE_ERRORS:
            out.append(None)
            continue
        if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
            arr = arr.mean(axis=-1)
        out.append(arr if arr.ndim == 2 else None)
    return out


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def _group_item(groups: Dataset | None, keyword: str) -> Dataset | None:
    if groups is None:
        return None
    seq = groups.get(keyword)
    return seq[0] if seq else None


def frame_headers(ds: Dataset) -> list[Dataset]:
    """Per-frame views of a multi-frame header: what a single-frame image of the same frame would carry.

    Each view has the instance's top-level attributes (SOP Class/Instance UID, patient, study, series, frame of
    reference) plus, at the top level, the frame's Image Position/Orientation (Patient), Pixel Spacing, Slice
    Thickness, Spacing Between Slices, Rescale Slope/Intercept/Type, Window Center/Width and (from the frame
    type macro) Image Type, taken from the frame's Per-frame Functional Groups item, else from the Shared
    Functional Groups (PS3.3 C.7.6.16). The Per-frame Functional Groups Sequence itself is left out of the
    views (each would otherwise hold every frame's groups); the shared one is kept.

    Parameters
    ----------
    ds : pydicom.Dataset
        A multi-frame header without pixel data (Enhanced CT/MR, Legacy Converted Enhanced CT/MR, or any
        multi-frame image; without functional groups every view carries the instance's own geometry).

    Returns
    -------
    list of pydicom.Dataset
        One view per frame, in frame order (frame number = index + 1).
    """
    n = _number_of_frames(ds)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    base = Dataset()
    # Iterating decodes every top-level value with the instance's character set before it is shared by the views.
    for elem in ds:
        if elem.keyword != "PerFrameFunctionalGroupsSequence":
            base.add(elem)
    views: list[Dataset] = []
    for index in range(n):
        frame = per_frame[index] if per_frame is not None and index < len(per_frame) else None
        view = Dataset()
        view.update(base)  # element objects are shared, not copied: the views are read-only
        for group, keywords in _FRAME_GROUPS.items():
            item = _group_item(frame, group) or _group_item(shared, group)
            if item is None:
                continue
            for keyword in keywords:
                if keyword in item:
                    view[keyword] = item[keyword]
        for group in _FRAME_TYPE_GROUPS:
            item = _group_item(frame, group) or _group_item(shared, group)
            if item is not None and item.get("FrameType"):
                # A new element: assigning to view.ImageType would change the shared instance-level element.
                view["ImageType"] = DataElement(0x00080008, "CS", list(item.FrameType))
        views.append(view)
    return views


def _is_multiframe(ds: Dataset) -> bool:
    return "NumberOfFrames" in ds or "PerFrameFunctionalGroupsSequence" in ds


def missing_images(positions: list[float]) -> int:
    """Images missing from a stack, from gaps that are whole multiples (>= 2) of the median spacing.

    Parameters
    ----------
    positions : list of float
        Positions along the slice normal (mm) of every image of the series, received or skipped, any order.

    Returns
    -------
    int
        The number of slice positions inside the stack where no image was received; 0 for fewer than three
        distinct positions (no spacing to judge by) or an irregular stack (gaps that are no whole multiple).
    """
    distinct = np.unique(np.round(np.asarray(positions, dtype=float), 3))
    if len(distinct) < 3:
        return 0
    gaps = np.diff(distinct)
    step = float(np.median(gaps))
    if step <= 1e-3:
        return 0
    missing = 0
    for gap in gaps:
        ratio = float(gap) / step
        # A gap counts only when it is clearly a dropped slice, not a variable-pitch reconstruction.
        if ratio >= 1.5 and abs(ratio - round(ratio)) < 0.2:
            missing += round(ratio) - 1
    return missing


def _stack_position(header: Dataset, normal: np.ndarray | None) -> float | None:
    p = _position(header)
    if p is None or normal is None:
        return None
    return float(np.dot(p, normal))


@dataclass(frozen=True)
class DecodedInstance:
    """One spooled instance read and decoded: everything :func:`load_study` needs of its file.

    Built by :func:`decode_instance`, on the pipeline thread at completion or ahead of it by a background decoder
    while the study is still arriving (``pacsflow_router.decoding``); read-only once built.
    """

    header: Dataset | None
    """The data set without its pixel data; None when the file could not be read."""
    image: bool = False
    """Whether the instance has pixel data (decodable or not)."""
    frames: tuple[np.ndarray | None, ...] = ()
    """Stored-value images, one per frame (None: that frame did not decode); empty when none did."""
    error: str | None = None
    """Why the file or its pixel data did not (fully) decode: the exception's type name, never its message (a
    decoder's message can quote header values)."""
    views: tuple[Dataset, ...] = ()
    """Per-frame views of a multi-frame header (:func:`frame_headers`), in frame order."""

    @property
    def nbytes(self) -> int:
        """Memory held by the decoded frames."""
        return sum(int(f.nbytes) for f in self.frames if f is not None)


def decode_instance(path: str | Path) -> DecodedInstance:
    """Read one spooled instance and decode its pixel data (one 2-D array per frame).

    Parameters
    ----------
    path : str or Path
        A Part-10 file in the spool.

    Returns
    -------
    DecodedInstance
        ``header`` None with ``error`` set when the file does not parse; no frames and no error for an instance
        without pixel data (an SR, a presentation state); ``error`` set when pixel data would not decode (a
        multi-frame instance keeps the frames that did).
    """
    try:
        ds = pydicom.dcmread(path)
        # pydicom converts element values on first access; do it here, so that a damaged element (an unknown VR, a
        # length past the end, ...) makes the instance unreadable now instead of raising later from whatever reads
        # it (fuzzing found NotImplementedError from frame_headers and ValueError from sort_slices).
        for element in ds.iterall():
            _ = element.value
    # On hostile header bytes pydicom raises almost anything (InvalidDicomError, EOFError, struct.error,
    # NotImplementedError, KeyError, ...); each one means this instance is unreadable.
    except Exception as exc:  # noqa: BLE001
        return DecodedInstance(header=None, error=type(exc).__name__)
    if not any(name in ds for name in _PIXEL_KEYWORDS):
        return DecodedInstance(header=ds)
    frames: list[np.ndarray | None]
    error = None
    try:
        frames = list(_frames(ds))
    except _DECODE_ERRORS as exc:
        error = type(exc).__name__
        # A multi-frame instance with one damaged frame need not lose the others: each compressed frame is its own
        # fragment(s), decodable alone.
        frames = _frame_by_frame(ds) if _is_multiframe(ds) else []
        if not any(f is not None for f in frames):
            frames = []
    _strip_pixels(ds)
    views = tuple(frame_headers(ds)) if _is_multiframe(ds) else ()
    return DecodedInstance(header=ds, image=True, error=error, views=views,
                           frames=tuple(None if f is None else np.ascontiguousarray(f) for f in frames))


def load_study(ref: domain.StudyRef, decoded: Mapping[str, DecodedInstance] | None = None) -> domain.Study:
    """Read, group, sort and decode the instances of a spooled study.

    Multi-frame images (Enhanced CT/MR, Legacy Converted Enhanced) become one slice per frame with a per-frame
    view as header (:func:`frame_headers`) and ``frame_number`` set. Instances whose pixel data cannot be decoded
    are recorded on their series (``Series.skipped``) and the rest is analysed; images missing from a stack are
    counted from its gaps (``Series.missing``). Whether what remains is still fit to analyse is the acceptance
    criteria's decision.

    Parameters
    ----------
    ref : domain.StudyRef
        The study and its spooled instance files.
    decoded : mapping of str to DecodedInstance, optional
        Instances already decoded (by path, as in ``ref.paths``), e.g. while the study was arriving; the others
        are read and decoded here. The result is the same either way.

    Returns
    -------
    domain.Study
        Series (in order of first appearance) with slices sorted along the normal; headers carry no
        pixel data. Instances without pixel data (e.g. SR, presentation states) are left out. Series
        whose every image was skipped are kept (empty ``slices``) so their ``skipped`` is reported.

    Raises
    ------
    UnparseableInstanceError
        No instance of the study could be read and decoded as an image.
    """
    series: dict[str, domain.Series] = {}
    skipped_views: dict[str, list[Dataset]] = {}  # headers of images not analysed, for the gap count
    first_header: Dataset | None = None
    unreadable = 0
    undecodable = 0
    for index, path in enumerate(ref.paths):
        item = decoded.get(path) if decoded is not None else None
        if item is None:
            item = decode_instance(path)
        ds = item.header
        if ds is None:
            # The spool only holds instances that parsed at ingest; a failure here is disk-level damage.
            log.warning("study %s: instance %d unreadable (%s), skipped", ref.key, index, item.error)
            unreadable += 1
            continue
        if first_header is None:
            first_header = ds
        if not item.image:
            continue  # no pixel data (an SR, a presentation state)
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if uid not in series:
            series[uid] = domain.Series(
                series_uid=uid,
                modality=str(ds.get("Modality", "") or ""),
                body_part=str(ds.get("BodyPartExamined", "") or ""),
                description=str(ds.get("SeriesDescription", "") or ""),
            )
            skipped_views[uid] = []
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        frames = item.frames
        if item.error is not None:
            # The type only: decoder messages can quote header values.
            log.warning("study %s: instance %d pixel data not decodable (%s)", ref.key, index, item.error)
            if not frames:
                undecodable += 1
                series[uid].skipped.append(domain.SkippedInstance(
                    sop_instance_uid=sop_uid, reason="pixel data not decodable", images=_number_of_frames(ds),
                ))
                skipped_views[uid].extend(item.views or [ds])
                continue
        if not _is_multiframe(ds):
            pixels = frames[0]
            assert pixels is not None  # a single frame that failed to decode leaves no frames at all
            series[uid].slices.append(domain.Slice(header=ds, pixels=pixels))
            continue
        views = list(item.views)
        if len(views) != len(frames):
            log.warning("study %s: instance %d declares %d frames but holds %d; frames beyond either skipped",
                        ref.key, index, len(views), len(frames))
        failed = [view for view, frame in zip(views, frames, strict=False) if frame is None]
        if failed:
            log.warning("study %s: instance %d: %d of %d frames not decodable, skipped", ref.key, index,
                        len(failed), len(views))
            series[uid].skipped.append(domain.SkippedInstance(
                sop_instance_uid=sop_uid, reason="frames not decodable", images=len(failed)))
            skipped_views[uid].extend(failed)
        if len(frames) < len(views):
            series[uid].skipped.append(domain.SkippedInstance(
                sop_instance_uid=sop_uid, reason="frames missing from pixel data", images=len(views) - len(frames)))
            skipped_views[uid].extend(views[len(frames):])
        series[uid].slices.extend(
            domain.Slice(header=view, pixels=frame, frame_number=number)
            for number, (view, frame) in enumerate(zip(views, frames, strict=False), start=1)
            if frame is not None
        )
    if first_header is None or not any(s.slices for s in series.values()):
        raise UnparseableInstanceError(
            f"study {ref.key}: none of its {len(ref.paths)} instances could be decoded as an image "
            f"({unreadable} unreadable, {undecodable} with undecodable pixel data); check the spool files and "
            f"the pixel-data plugins (pylibjpeg, pyjpegls)"
        )
    for s in series.values():
        s.slices = sort_slices(s.slices)
        s.missing = _missing(s, skipped_views[s.series_uid])
        if not s.complete:
            log.warning("study %s series %d: %s", ref.key, list(series).index(s.series_uid), s.coverage())
    return domain.Study(ref=ref, first_header=first_header, series=list(series.values()), unreadable=unreadable)


def _strip_pixels(ds: Dataset) -> None:
    for name in _PIXEL_KEYWORDS:
        if name in ds:
            del ds[name]


def _missing(series: domain.Series, skipped: list[Dataset]) -> int:
    """Images missing from the stack: gaps not explained by the skipped (received but undecodable) images,
    given by their headers (per-frame views for frames)."""
    if not series.slices:
        return 0
    normal = slice_normal(series.slices[0].header)
    positions: list[float] = []
    for header in [s.header for s in series.slices] + skipped:
        p = _stack_position(header, normal)
        if p is None:
            return 0  # without complete geometry there is no stack to find gaps in
        positions.append(p)
    return missing_images(positions)
