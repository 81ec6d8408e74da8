"""Synthetic head-CT phantom studies with ground truth: the one data source of the demo, tests and benches.

A study is one axial "Head non-con" CT series (CT Image Storage, PS3.3 A.3) of an ellipsoidal head:
scalp, skull (cortical tables around a less dense diploe), grey and white matter, lateral ventricles
(CSF), a smooth beam-hardening bias and quantum noise, stored as int16 with an HU rescale
(PS3.3 C.11.1.1.2). A study ``with lesion`` carries one or two hyperdense "hemorrhage" blobs
(60-90 HU, 4-25 mm, some with a hypodense oedema rim) somewhere inside the brain.

Everything is derived from ``seed``: the same seed gives the same pixels, headers and UIDs, so a test
can regenerate exactly the study the demo sent. Patient names and IDs are synthetic
(``PHANTOM^CT00042``), never real.

``pacsflow phantom --out DIR --studies N --seed S --lesion-fraction F --slices N`` writes studies and a
``ground_truth.json`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

__all__ = ["GroundTruth", "Lesion", "generate_study", "write_study", "lesion_schedule", "main"]

#: Transfer syntaxes pydicom can write natively (no encoder plugin needed).
_NATIVE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}

_RESCALE_INTERCEPT = -1024.0
_HU_AIR = -1000.0
_HU_SCALP = 35.0
_HU_CORTICAL_BONE = 1500.0
_HU_DIPLOE = 700.0
_HU_GREY = 38.0
_HU_WHITE = 28.0
_HU_CSF = 6.0


@dataclass(frozen=True)
class Lesion:
    """Ground truth of one hyperdense lesion.

    Attributes
    ----------
    centre_mm : tuple of float
        Centre (x, y, z) in the patient coordinate system (mm, PS3.3 C.7.6.2.1.1).
    radius_mm : float
        Largest semi-axis of the (ellipsoidal) lesion, mm; every lesion voxel lies within it.
    semi_axes_mm : tuple of float
        Semi-axes along x, y, z (mm).
    hu : float
        Mean attenuation of the lesion (HU).
    slice_indices : tuple of int
        Indices (0-based, in slice order along the normal = InstanceNumber - 1) whose plane cuts the lesion.
    pixel_centre : tuple of float
        (row, column) of the centre in the image matrix (0-based pixel centres).
    """

    centre_mm: tuple[float, float, float]
    radius_mm: float
    semi_axes_mm: tuple[float, float, float]
    hu: float
    slice_indices: tuple[int, ...]
    pixel_centre: tuple[float, float]


@dataclass(frozen=True)
class GroundTruth:
    """What a phantom study contains.

    Attributes
    ----------
    seed : int
        The seed the study was generated from.
    study_instance_uid : str
        Study Instance UID of the generated study.
    series_instance_uid : str
        Series Instance UID of its one series.
    has_lesion : bool
        Whether the study contains at least one lesion.
    lesions : tuple of Lesion
        The lesions (empty without lesion).
    rows, cols, slices : int
        Matrix size and number of slices.
    pixel_spacing_mm : tuple of float
        (row spacing, column spacing) in mm.
    slice_spacing_mm : float
        Distance between slice centres in mm.
    """

    seed: int
    study_instance_uid: str
    series_instance_uid: str
    has_lesion: bool
    lesions: tuple[Lesion, ...]
    rows: int
    cols: int
    slices: int
    pixel_spacing_mm: tuple[float, float]
    slice_spacing_mm: float
    positive_slices: tuple[int, ...] = field(default=())
    """Union of the lesions' ``slice_indices``, sorted."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the layout of ``ground_truth.json``)."""
        return asdict(self)


def _ds(value: float) -> str:
    """A Decimal String (DS, max 16 characters) for ``value``."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _uid(seed: int, *parts: str) -> UID:
    return generate_uid(entropy_srcs=["pacsflow-phantom", str(seed), *parts])


@dataclass(frozen=True)
class _Head:
    """Random anatomy of one phantom (mm, patient coordinates, head centre at (cx, cy, cz))."""

    cx: float
    cy: float
    cz: float
    ax: float  # outer (skin) semi-axis left-right
    ay: float  # outer semi-axis anterior-posterior
    az: float  # semi-axis superior-inferior
    scalp: float
    skull: float
    shape_coeffs: tuple[tuple[float, float], ...]  # low-order angular irregularity of the outline
    noise_hu: float
    bias_hu: float
    ventricle_scale: float


def _make_head(rng: np.random.Generator) -> _Head:
    coeffs = tuple((float(rng.normal(0, 0.012)), float(rng.uniform(0, 2 * math.pi))) for _ in range(3))
    return _Head(
        cx=float(rng.uniform(-6, 6)), cy=float(rng.uniform(-8, 8)), cz=float(rng.uniform(-40, 40)),
        ax=float(rng.uniform(70, 78)), ay=float(rng.uniform(88, 98)), az=float(rng.uniform(92, 100)),
        scalp=float(rng.uniform(3.5, 6.0)), skull=float(rng.uniform(5.0, 8.0)), shape_coeffs=coeffs,
        noise_hu=float(rng.uniform(3.0, 6.0)), bias_hu=float(rng.uniform(-4.0, 4.0)),
        ventricle_scale=float(rng.uniform(0.8, 1.3)),
    )


def _slice_scale(head: _Head, z_rel: np.ndarray | float) -> np.ndarray | float:
    """Cross-section scale of the ellipsoidal head at height ``z_rel`` above its centre."""
    return np.sqrt(np.clip(1.0 - (np.asarray(z_rel) / head.az) ** 2, 0.0, 1.0))


def _brain_axes(head: _Head, z_rel: float) -> tuple[float, float]:
    """Semi-axes (x, y) of the brain (inside the inner skull table) at height ``z_rel``."""
    s = float(_slice_scale(head, z_rel))
    return (max(head.ax * s - head.scalp - head.skull, 0.0), max(head.ay * s - head.scalp - head.skull, 0.0))


def _smoothstep(edge: np.ndarray, width: float) -> np.ndarray:
    """0 -> 1 over ``width`` mm around ``edge`` = 0 (partial-volume edges instead of hard steps)."""
    return np.clip(0.5 + edge / max(width, 1e-6), 0.0, 1.0)


@dataclass(frozen=True)
class _Grid:
    """Per-study geometry of the image plane, computed once (float32, mm)."""

    x: np.ndarray  # (rows, cols) patient x of each pixel centre
    y: np.ndarray
    dx: np.ndarray  # offset from the head's axis
    dy: np.ndarray
    r: np.ndarray  # distance from the head's axis
    r_outline: np.ndarray  # skin outline radius along each pixel's ray, at full cross-section scale
    falx: np.ndarray  # weight of the midline CSF gap


def _make_grid(head: _Head, cols_mm: np.ndarray, rows_mm: np.ndarray) -> _Grid:
    x, y = (a.astype(np.float32) for a in np.meshgrid(cols_mm, rows_mm))
    dx, dy = x - np.float32(head.cx), y - np.float32(head.cy)
    theta = np.arctan2(dy, dx)
    irregular = 1.0 + sum(a * np.cos((k + 2) * theta + ph) for k, (a, ph) in enumerate(head.shape_coeffs))
    r_outline = irregular * (head.ax * head.ay) / np.sqrt((head.ay * np.cos(theta)) ** 2 + (head.ax * np.sin(theta)) ** 2)
    falx = np.exp(-0.5 * (dx / 1.2) ** 2)
    return _Grid(x, y, dx, dy, np.hypot(dx, dy), r_outline.astype(np.float32), falx.astype(np.float32))


def _render_slice(
    head: _Head,
    lesions: Sequence[dict[str, Any]],
    g: _Grid,
    z: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """HU image of the plane at patient height ``z``."""
    z_rel = z - head.cz
    s = float(_slice_scale(head, z_rel))
    noise = rng.standard_normal(size=g.x.shape, dtype=np.float32) * np.float32(head.noise_hu)
    if s <= 0.05:
        return noise + np.float32(_HU_AIR)
    # Distance inward from the skin outline (mm, positive inside), along the ray through the centre.
    depth = np.float32(s) * g.r_outline - g.r
    inside_skin = _smoothstep(depth, 1.0)
    inside_skull = _smoothstep(depth - head.scalp, 0.8)
    brain_depth = depth - np.float32(head.scalp + head.skull)
    inside_brain = _smoothstep(brain_depth, 0.8)
    # Skull: two cortical tables around a less dense diploe.
    table = head.skull * 0.3
    in_diploe = _smoothstep(depth - head.scalp - table, 0.6) * (1 - _smoothstep(brain_depth + table, 0.6))
    bone = _HU_CORTICAL_BONE + (_HU_DIPLOE - _HU_CORTICAL_BONE) * in_diploe
    # Brain: grey-matter cortex around white matter, a midline CSF gap (falx) and lateral ventricles.
    white = _smoothstep(brain_depth - np.float32(4.0 + 6.0 * s), 3.0)
    brain = _HU_GREY + (_HU_WHITE - _HU_GREY) * white
    falx = g.falx * (np.abs(g.dy) < head.ay * s * 0.75)
    brain = brain + 0.4 * falx * (_HU_CSF - brain)
    if -15.0 < z_rel < 40.0:
        vs = head.ventricle_scale * math.sqrt(max(0.0, 1 - ((z_rel - 12.0) / 28.0) ** 2))
        for side in (-1.0, 1.0):
            v = ((g.dx - side * 7.0 * vs) / (4.0 * vs + 1e-3)) ** 2 + ((g.dy + 6.0) / (20.0 * vs + 1e-3)) ** 2
            brain = np.where(v < 1.0, _HU_CSF + (brain - _HU_CSF) * v**4, brain)
    for lesion in lesions:
        _paint_lesion(brain, lesion, g, z)
    hu = _HU_AIR + (_HU_SCALP - _HU_AIR) * inside_skin
    hu = hu + inside_skull * (bone - hu)
    hu = hu + inside_brain * (brain - hu)
    # Beam hardening: a smooth bias of a few HU, strongest at the centre.
    hu = hu + head.bias_hu * (1 - (g.r / (max(head.ax, head.ay) * s)) ** 2) * inside_brain
    out: np.ndarray = (hu + noise).astype(np.float32)
    return out


def _paint_lesion(brain: np.ndarray, lesion: dict[str, Any], g: _Grid, z: float) -> None:
    """Blend one lesion (and its oedema rim) into ``brain`` in place, only inside its bounding box."""
    lx, ly, lz = lesion["centre"]
    sx, sy, sz = lesion["axes"]
    dz2 = ((z - lz) / sz) ** 2
    reach = 1.0 + (lesion["rim"] + 1.0) / min(sx, sy)
    if dz2 >= reach**2:
        return
    xs, ys = g.x[0], g.y[:, 0]
    half = reach * max(sx, sy)
    c0, c1 = np.searchsorted(xs, [lx - half, lx + half])
    r0, r1 = np.searchsorted(ys, [ly - half, ly + half])
    if c0 >= c1 or r0 >= r1:
        return
    x, y = g.x[r0:r1, c0:c1], g.y[r0:r1, c0:c1]
    rho = np.sqrt(((x - lx) / sx) ** 2 + ((y - ly) / sy) ** 2 + dz2)
    box = brain[r0:r1, c0:c1]
    core = _smoothstep((1.0 - rho) * min(sx, sy), 0.7)
    if lesion["rim"] > 0:
        rim = _smoothstep((1.0 + lesion["rim"] / min(sx, sy) - rho) * min(sx, sy), 1.0) * (1 - core)
        box += rim * (lesion["rim_hu"] - box)
    clot = lesion["hu"] + lesion["texture"] * np.cos(0.9 * (x - lx) + 1.3 * (y - ly))
    box += core * (clot - box)


def _place_lesions(head: _Head, rng: np.random.Generator, z_planes: np.ndarray) -> list[dict[str, Any]]:
    """One or two lesions inside the brain, each cut near its centre by at least one slice plane."""
    lesions: list[dict[str, Any]] = []
    for _ in range(1 if rng.random() < 0.6 else 2):
        diameter = float(np.exp(rng.uniform(math.log(4.0), math.log(25.0))))
        r = diameter / 2
        axes = tuple(float(r * f) for f in rng.uniform(0.8, 1.2, size=3))
        # Only planes where the brain is large enough to hold the lesion with a 3 mm margin.
        candidates = []
        for k, z in enumerate(z_planes):
            bx, by = _brain_axes(head, float(z) - head.cz)
            if min(bx, by) > max(axes[:2]) + 12.0:
                candidates.append(k)
        if not candidates:
            continue
        k = int(rng.choice(candidates))
        # Centre close to a slice plane so the lesion is seen at its full size in one image.
        z_c = float(z_planes[k] + rng.uniform(-0.3, 0.3) * min(axes[2], abs(z_planes[1] - z_planes[0]) if len(z_planes) > 1 else 1.0))
        bx, by = _brain_axes(head, z_c - head.cz)
        margin = max(axes[:2]) + 3.0
        for _attempt in range(100):
            u, v = rng.uniform(-1, 1, size=2)
            if u * u + v * v <= 1.0:
                break
        x_c = head.cx + u * max(bx - margin, 0.0)
        y_c = head.cy + v * max(by - margin, 0.0)
        lesions.append({
            "centre": (float(x_c), float(y_c), z_c),
            "axes": axes,
            "hu": float(rng.uniform(60.0, 90.0)),
            "texture": float(rng.uniform(0.0, 4.0)),
            "rim": float(rng.uniform(1.5, 4.0)) if rng.random() < 0.4 else 0.0,
            "rim_hu": float(rng.uniform(14.0, 22.0)),
        })
    return lesions


def generate_study(
    seed: int,
    *,
    lesion: bool,
    slices: int = 32,
    rows: int = 512,
    cols: int = 512,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    study_instance_uid: str | None = None,
) -> tuple[list[Dataset], GroundTruth]:
    """Generate one synthetic head-CT study in memory.

    Parameters
    ----------
    seed : int
        Everything (anatomy, lesions, noise, UIDs, synthetic patient) derives from it.
    lesion : bool
        Place one or two hyperdense lesions inside the brain.
    slices, rows, cols : int
        Number of axial slices and matrix size (any size; the field of view stays ~220-250 mm).
    transfer_syntax_uid : str
        Transfer syntax of the datasets: Explicit/Implicit VR Little Endian, or a lossless one pydicom
        can encode (RLE Lossless, JPEG-LS Lossless, JPEG 2000 Lossless).
    study_instance_uid : str, optional
        Use this Study Instance UID instead of the one derived from ``seed``.

    Returns
    -------
    datasets : list of pydicom.Dataset
        One CT Image Storage dataset per slice with file meta, in slice order (InstanceNumber 1..N,
        inferior to superior).
    truth : GroundTruth
        Lesion positions in patient (mm) and pixel coordinates.
    """
    if slices < 1 or rows < 16 or cols < 16:
        raise ValueError(f"phantom needs slices >= 1 and rows, cols >= 16 (got {slices}, {rows}, {cols})")
    rng = np.random.default_rng([seed, 0x50AC5F])
    head = _make_head(rng)
    fov = float(rng.uniform(220.0, 250.0))
    spacing = fov / max(rows, cols)
    coverage = min(slices * 5.0, 150.0)
    dz = coverage / slices
    # Slices cover the brain from just above the skull base upwards (z_rel -55 .. +95 at most).
    z_first = head.cz - 55.0 + dz / 2 + max(0.0, (150.0 - coverage) / 2)
    z_planes = z_first + dz * np.arange(slices)
    # Top-left pixel centre so that the head sits near the middle of the field of view.
    x0 = -spacing * (cols - 1) / 2 + float(rng.uniform(-5, 5))
    y0 = -spacing * (rows - 1) / 2 + float(rng.uniform(-5, 5))
    cols_mm = x0 + spacing * np.arange(cols, dtype=np.float64)
    rows_mm = y0 + spacing * np.arange(rows, dtype=np.float64)
    grid = _make_grid(head, cols_mm, rows_mm)
    placed = _place_lesions(head, rng, z_planes) if lesion else []

    study_uid = UID(study_instance_uid) if study_instance_uid else _uid(seed, "study")
    series_uid = _uid(seed, study_uid, "series")
    for_uid = _uid(seed, study_uid, "frame-of-reference")
    date = dt.date(2026, 1, 1) + dt.timedelta(days=seed % 365)
    study_date = date.strftime("%Y%m%d")
    study_time = f"{8 + seed % 12:02d}{seed % 60:02d}00"

    datasets = []
    for k, z in enumerate(z_planes):
        hu = _render_slice(head, placed, grid, float(z), rng)
        stored = np.clip(np.rint(hu - _RESCALE_INTERCEPT), -32768, 32767).astype(np.int16)
        ds = _header(
            seed, k, study_uid, series_uid, for_uid, study_date, study_time,
            rows, cols, spacing, dz, (x0, y0, float(z)),
        )
        ds.PixelData = stored.tobytes()
        if transfer_syntax_uid not in _NATIVE:
            # Lossless only: the int16 HU values must survive; JPEG baseline cannot carry 16-bit data.
            ds.compress(transfer_syntax_uid, stored, generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = UID(transfer_syntax_uid)
        datasets.append(ds)

    lesions = []
    for les in placed:
        lx, ly, lz = les["centre"]
        sz = les["axes"][2]
        cut = tuple(k for k, z in enumerate(z_planes) if abs(float(z) - lz) < sz)
        lesions.append(Lesion(
            centre_mm=(round(lx, 3), round(ly, 3), round(lz, 3)),
            radius_mm=round(max(les["axes"]), 3),
            semi_axes_mm=tuple(round(a, 3) for a in les["axes"]),
            hu=round(les["hu"], 1),
            slice_indices=cut,
            pixel_centre=(round((ly - y0) / spacing, 2), round((lx - x0) / spacing, 2)),
        ))
    truth = GroundTruth(
        seed=seed, study_instance_uid=str(study_uid), series_instance_uid=str(series_uid),
        has_lesion=bool(lesions), lesions=tuple(lesions), rows=rows, cols=cols, slices=slices,
        pixel_spacing_mm=(spacing, spacing), slice_spacing_mm=dz,
        positive_slices=tuple(sorted({k for les in lesions for k in les.slice_indices})),
    )
    return datasets, truth


def _header(
    seed: int, k: int, study_uid: UID, series_uid: UID, for_uid: UID, study_date: str, study_time: str,
    rows: int, cols: int, spacing: float, dz: float, position: tuple[float, float, float],
) -> Dataset:
    """Patient, study, series, frame of reference, equipment, image plane/pixel and CT image modules."""
    sop_uid = _uid(seed, series_uid, "instance", str(k))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = study_time
    ds.AccessionNumber = f"PFA{seed:07d}"
    ds.Modality = "CT"
    ds.Manufacturer = "pacsflow"
    ds.InstitutionName = "Phantom General Hospital"
    ds.ReferringPhysicianName = "REFERRER^PHANTOM"
    ds.StationName = "PHANTOMCT"
    ds.StudyDescription = "CT Head"
    ds.SeriesDescription = "Head non-con"
    ds.ManufacturerModelName = "pacsflow head phantom"
    # Synthetic patient: never a real name or ID.
    ds.PatientName = f"PHANTOM^CT{seed:05d}"
    ds.PatientID = f"PF{seed:06d}"
    ds.PatientBirthDate = f"{1940 + seed % 60}0101"
    ds.PatientSex = "MF"[seed % 2]
    ds.PatientAge = f"{2026 - (1940 + seed % 60):03d}Y"
    ds.BodyPartExamined = "HEAD"
    ds.SliceThickness = _ds(dz)
    ds.KVP = "120"
    ds.SpacingBetweenSlices = _ds(dz)
    ds.SoftwareVersions = "pacsflow-phantom 1"
    ds.ConvolutionKernel = "BRAIN"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"{seed % 100000}"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(v) for v in position]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(position[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = "40"
    ds.WindowWidth = "80"
    ds.RescaleIntercept = _ds(_RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    return ds


def write_study(
    out_dir: str | Path,
    seed: int,
    *,
    lesion: bool,
    slices: int = 32,
    rows: int = 512,
    cols: int = 512,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    study_instance_uid: str | None = None,
) -> tuple[list[Path], GroundTruth]:
    """Generate a study (see :func:`generate_study`) and write it as DICOM files (PS3.10) into ``out_dir``.

    Returns
    -------
    paths : list of Path
        ``out_dir/IM0001.dcm`` ... in slice order.
    truth : GroundTruth
        Ground truth of the study.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    datasets, truth = generate_study(
        seed, lesion=lesion, slices=slices, rows=rows, cols=cols,
        transfer_syntax_uid=transfer_syntax_uid, study_instance_uid=study_instance_uid,
    )
    paths = []
    for ds in datasets:
        path = out / f"IM{int(ds.InstanceNumber):04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths, truth


_TS_NAMES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": pydicom.uid.RLELossless,
    "jpegls": pydicom.uid.JPEGLSLossless,
    "j2k": pydicom.uid.JPEG2000Lossless,
}


def lesion_schedule(studies: int, lesion_fraction: float) -> list[bool]:
    """Which of ``studies`` studies get a lesion: evenly interleaved, exactly round-down(N * F) of them."""
    return [math.floor((i + 1) * lesion_fraction) > math.floor(i * lesion_fraction) for i in range(studies)]


def main(argv: list[str] | None = None) -> int:
    """``pacsflow phantom``: write phantom studies to ``--out/study_NNN/`` plus ``--out/ground_truth.json``."""
    parser = argparse.ArgumentParser(prog="pacsflow phantom", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--studies", type=int, default=4, help="number of studies (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first study; study i uses seed + i")
    parser.add_argument("--lesion-fraction", type=float, default=0.5, help="fraction of studies with a lesion")
    parser.add_argument("--slices", type=int, default=32, help="slices per study (default 32)")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--cols", type=int, default=512)
    parser.add_argument("--transfer-syntax", choices=sorted(_TS_NAMES), default="explicit")
    args = parser.parse_args(argv)
    if not 0.0 <= args.lesion_fraction <= 1.0:
        parser.error("--lesion-fraction must be between 0 and 1")
    entries = []
    for i, lesion in enumerate(lesion_schedule(args.studies, args.lesion_fraction)):
        folder = args.out / f"study_{i:03d}"
        paths, truth = write_study(
            folder, args.seed + i, lesion=lesion, slices=args.slices, rows=args.rows, cols=args.cols,
            transfer_syntax_uid=_TS_NAMES[args.transfer_syntax],
        )
        entries.append({"folder": folder.name, "files": len(paths), **truth.to_dict()})
        print(f"{folder}: {len(paths)} slices, lesion={truth.has_lesion}")
    (args.out / "ground_truth.json").write_text(json.dumps({"studies": entries}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
