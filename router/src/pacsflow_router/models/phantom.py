"""Synthetic head-CT phantom studies with ground truth: the one data source of the demo, tests and benches.

A study is one axial "Head non-con" CT series (CT Image Storage, PS3.3 A.3) of a head with the anatomy that
fools hemorrhage detectors, rendered from an analytic model in patient coordinates (LPS, mm):

- scalp; a skull vault of two cortical tables around a less dense diploe, with a skull base below the cranial
  fossae (anterior, middle and posterior fossa floors, petrous ridges, clivus, an air-filled sphenoid sinus);
- grey-matter cortex around white matter, deep grey nuclei, extra-axial CSF, sulci (CSF clefts from the brain
  surface), the interhemispheric fissure with the falx, lateral and third ventricles;
- physiological calcifications (pineal, choroid plexus, falx plaques, basal ganglia; 150-600 HU, 3-8 mm), a
  hyperdense falx, beam-hardening streaks between the petrous bones and a cupping bias -- the classic false
  positives of a blood detector;
- partial volume: edges are smooth at the pixel scale, and a thick slice averages sub-planes across its thickness
  (the bone-brain border near the vertex and skull base smears into the blood range, as on real scanners);
- correlated quantum noise at a dose-dependent level; with ``varied=True`` also random field of view, slice
  thickness (0.625-5 mm), gantry tilt (0-25 degrees, as Gantry/Detector Tilt and a sheared stack, PS3.3
  C.7.6.2.1.1) and head yaw.

A study ``with lesion`` carries one or two acute hemorrhages (50-90 HU) of the types in :data:`HEMORRHAGE_TYPES`:
intraparenchymal (an ellipsoidal clot, 4-30 mm, sometimes with an oedema rim), subdural (a crescent along the
inner table), epidural (a biconvex lens), subarachnoid (blood in the sulci of one region) and intraventricular
(a dependent blood-fluid level in a lateral ventricle). ``mimics`` forces the hard negatives of
:data:`MIMIC_TYPES` (``bone_only``: the skull filled with water, no brain).

Everything is derived from ``seed``: the same seed gives the same pixels, headers and UIDs, so a test can
regenerate exactly the study the demo sent; the same seed with and without lesion gives the same anatomy.
Patient names and IDs are synthetic (``PHANTOM^CT00042``), never real. :class:`GroundTruth` lists every
hemorrhage with its type, location (region name, centre, extent) and the slices that show it.

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
from typing import Any, Literal, get_args

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
from scipy import ndimage

__all__ = [
    "GroundTruth", "Lesion", "Acquisition", "PhantomStudy", "HemorrhageType", "MimicType", "HEMORRHAGE_TYPES",
    "MIMIC_TYPES", "generate_study", "write_study", "lesion_schedule", "main",
]

HemorrhageType = Literal["intraparenchymal", "subdural", "epidural", "subarachnoid", "intraventricular"]
MimicType = Literal["calcifications", "dense_falx", "streaks", "partial_volume", "bone_only"]
#: Hemorrhage types a lesion study may carry.
HEMORRHAGE_TYPES: tuple[HemorrhageType, ...] = get_args(HemorrhageType)
#: Hard negatives: ``calcifications`` (pineal, choroid plexus, falx plaques, basal ganglia, all at once),
#: ``dense_falx`` (a hyperdense falx in the blood range), ``streaks`` (strong beam-hardening streaks, skull
#: base levels), ``partial_volume`` (5 mm slices through the vertex or the skull base, where the skull is cut
#: tangentially), ``bone_only`` (scalp and skull filled with water).
MIMIC_TYPES: tuple[MimicType, ...] = get_args(MimicType)

#: Transfer syntaxes pydicom can write natively (no encoder plugin needed).
_NATIVE = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}

_RESCALE_INTERCEPT = -1024.0
_HU_AIR = -1000.0
_HU_SCALP = 35.0
_HU_CSF = 6.0
#: A pixel belongs to a hemorrhage in the ground truth when at least this fraction of it is blood.
BLOOD_FRACTION = 0.5
#: ... and a slice shows a hemorrhage when at least this many mm^2 of it do.
MIN_BLOOD_AREA_MM2 = 6.0
_THICKNESSES = (0.625, 1.0, 1.25, 2.0, 2.5, 3.0, 5.0, 5.0)


@dataclass(frozen=True)
class Lesion:
    """Ground truth of one hemorrhage.

    Attributes
    ----------
    centre_mm : tuple of float
        A point of the hemorrhage (x, y, z) in the patient coordinate system (mm, PS3.3 C.7.6.2.1.1): the
        blood-weighted centre of its largest cross-section (inside the blood even for a crescent).
    radius_mm : float
        Every blood voxel lies within this distance of ``centre_mm``.
    semi_axes_mm : tuple of float
        Half the extent of the blood along x, y, z (mm).
    hu : float
        Attenuation of the blood (HU, before partial volume and noise).
    slice_indices : tuple of int
        Indices (0-based, in slice order along the normal = InstanceNumber - 1) of the slices in which at
        least :data:`MIN_BLOOD_AREA_MM2` are at least :data:`BLOOD_FRACTION` blood.
    pixel_centre : tuple of float
        (row, column) of ``centre_mm`` in the image matrix (0-based pixel centres) of the slice it lies in.
    kind : str
        Hemorrhage type, one of :data:`HEMORRHAGE_TYPES`.
    location : str
        Side and region, e.g. ``"left frontal"``, ``"right parietal convexity"``, ``"left lateral ventricle"``.
    volume_ml : float
        Blood volume seen by the slices (area x spacing), ml.
    """

    centre_mm: tuple[float, float, float]
    radius_mm: float
    semi_axes_mm: tuple[float, float, float]
    hu: float
    slice_indices: tuple[int, ...]
    pixel_centre: tuple[float, float]
    kind: str = "intraparenchymal"
    location: str = ""
    volume_ml: float = 0.0


@dataclass(frozen=True)
class Acquisition:
    """How a phantom study was acquired and reconstructed."""

    fov_mm: float
    slice_thickness_mm: float
    gantry_tilt_deg: float
    noise_hu: float
    """Standard deviation of the quantum noise in uniform tissue (HU); a proxy of the dose."""
    yaw_deg: float = 0.0


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
        Whether the study shows at least one hemorrhage.
    lesions : tuple of Lesion
        The hemorrhages seen by at least one slice (empty without lesion).
    rows, cols, slices : int
        Matrix size and number of slices.
    pixel_spacing_mm : tuple of float
        (row spacing, column spacing) in mm.
    slice_spacing_mm : float
        Distance between slice centres in mm (along the table; slices are contiguous).
    positive_slices : tuple of int
        Union of the lesions' ``slice_indices``, sorted.
    hemorrhage_types : tuple of str
        Sorted set of the lesions' kinds.
    mimics : tuple of str
        Hard negatives the study carries on purpose (:data:`MIMIC_TYPES`).
    calcifications : tuple of str
        Physiological calcifications present (``pineal``, ``choroid_plexus``, ``falx``, ``basal_ganglia``).
    acquisition : dict
        :class:`Acquisition` as a dict.
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
    hemorrhage_types: tuple[str, ...] = field(default=())
    mimics: tuple[str, ...] = field(default=())
    calcifications: tuple[str, ...] = field(default=())
    acquisition: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the layout of ``ground_truth.json``)."""
        return asdict(self)


def _ds(value: float) -> str:
    """A Decimal String (DS, max 16 characters) for ``value``."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _uid(seed: int, *parts: str) -> UID:
    return generate_uid(entropy_srcs=["pacsflow-phantom", str(seed), *parts])


def _ramp(edge: np.ndarray | float, width: float) -> np.ndarray:
    """0 -> 1 over ``width`` mm around ``edge`` = 0 (partial-volume edges instead of hard steps)."""
    out: np.ndarray = np.clip(0.5 + np.asarray(edge, dtype=np.float32) / np.float32(max(width, 1e-6)), 0.0, 1.0)
    return out


def _ellipsoid(p: tuple[np.ndarray, np.ndarray, np.ndarray], centre: Sequence[float], axes: Sequence[float],
               angle: float = 0.0, edge: float = 0.7) -> np.ndarray:
    """Partial-volume weight (0..1) of an ellipsoid, rotated by ``angle`` (rad) about z, at points ``p``."""
    # A plane that passes above or below the ellipsoid (and its soft edge) gets exact zeros without the work.
    reach = axes[2] * (1.0 + edge / (2.0 * min(axes))) + 1e-3
    if float(p[2].min()) > centre[2] + reach or float(p[2].max()) < centre[2] - reach:
        return np.zeros_like(p[0])
    x, y, z = p[0] - centre[0], p[1] - centre[1], p[2] - centre[2]
    if angle:
        x, y = x * math.cos(angle) + y * math.sin(angle), -x * math.sin(angle) + y * math.cos(angle)
    rho = np.sqrt((x / axes[0]) ** 2 + (y / axes[1]) ** 2 + (z / axes[2]) ** 2)
    return _ramp((1.0 - rho) * min(axes), edge)


@dataclass(frozen=True)
class _Blob:
    centre: tuple[float, float, float]
    axes: tuple[float, float, float]
    hu: float
    angle: float = 0.0
    name: str = ""


@dataclass(frozen=True)
class _Head:
    """Random anatomy of one phantom (head coordinates: mm from the head centre, x left, y posterior, z up)."""

    ax: float  # outer (skin) semi-axis left-right
    ay: float  # outer semi-axis anterior-posterior
    az: float  # semi-axis superior (vertex)
    scalp: float
    skull: float
    table: float  # cortical table thickness
    shape_coeffs: tuple[tuple[float, float], ...]
    cortical_hu: float
    diploe_hu: float
    grey_hu: float
    white_hu: float
    csf_hu: float
    falx_hu: float
    extra_axial_csf: float  # width of the subarachnoid space (atrophy)
    sulci: int
    sulcus_phase: float
    sulcus_width: float
    sulcus_depth: float
    ventricle_scale: float
    bias_hu: float
    streak_hu: float
    calcs: tuple[_Blob, ...]
    dense_falx: bool
    bone_only: bool


def _make_head(rng: np.random.Generator, mimics: Sequence[str]) -> _Head:
    coeffs = tuple((float(rng.normal(0, 0.012)), float(rng.uniform(0, 2 * math.pi))) for _ in range(3))
    grey = float(rng.uniform(34, 42))
    calcs = _calcifications(rng, force="calcifications" in mimics)
    return _Head(
        ax=float(rng.uniform(70, 78)), ay=float(rng.uniform(88, 98)), az=float(rng.uniform(92, 100)),
        scalp=float(rng.uniform(3.5, 6.0)), skull=float(rng.uniform(5.0, 8.5)), table=float(rng.uniform(1.3, 2.5)),
        shape_coeffs=coeffs, cortical_hu=float(rng.uniform(1300, 1900)), diploe_hu=float(rng.uniform(400, 900)),
        grey_hu=grey, white_hu=grey - float(rng.uniform(6, 12)), csf_hu=float(rng.uniform(0, 12)),
        falx_hu=float(rng.uniform(60, 85)) if "dense_falx" in mimics else float(rng.uniform(25, 45)),
        extra_axial_csf=float(rng.uniform(0.3, 3.0)), sulci=int(rng.integers(22, 40)),
        sulcus_phase=float(rng.uniform(0, 2 * math.pi)), sulcus_width=float(rng.uniform(0.6, 1.6)),
        sulcus_depth=float(rng.uniform(6, 14)), ventricle_scale=float(rng.uniform(0.8, 1.4)),
        bias_hu=float(rng.uniform(-5.0, 6.0)),
        streak_hu=float(rng.uniform(60, 120)) if "streaks" in mimics else float(rng.uniform(5, 35)),
        calcs=calcs, dense_falx="dense_falx" in mimics, bone_only="bone_only" in mimics,
    )


def _calcifications(rng: np.random.Generator, force: bool) -> tuple[_Blob, ...]:
    """Physiological calcifications, each present with its population frequency (all of them when forced)."""
    blobs: list[_Blob] = []

    def hu() -> float:
        return float(rng.uniform(150, 600))

    if force or rng.random() < 0.5:  # pineal gland, midline behind the third ventricle
        r = float(rng.uniform(1.5, 4.0))
        blobs.append(_Blob((float(rng.normal(0, 0.5)), float(rng.uniform(12, 20)), float(rng.uniform(2, 10))),
                           (r, r * 1.2, r), hu(), name="pineal"))
    if force or rng.random() < 0.4:  # choroid plexus glomus in the atria of both lateral ventricles
        r = float(rng.uniform(1.5, 4.0))
        z = float(rng.uniform(8, 18))
        for side in (-1, 1):
            blobs.append(_Blob((side * float(rng.uniform(17, 22)), float(rng.uniform(20, 28)), z),
                               (r, r * 1.4, r), hu(), name="choroid_plexus"))
    if force or rng.random() < 0.15:  # falx plaques
        for _ in range(int(rng.integers(1, 4))):
            blobs.append(_Blob((0.0, float(rng.uniform(-50, 40)), float(rng.uniform(20, 70))),
                               (1.5, float(rng.uniform(3, 8)), float(rng.uniform(1.5, 4))), hu() + 200, name="falx"))
    if force or rng.random() < 0.1:  # globus pallidus
        r = float(rng.uniform(1.5, 3.5))
        for side in (-1, 1):
            blobs.append(_Blob((side * float(rng.uniform(14, 19)), float(rng.uniform(-4, 4)), float(rng.uniform(-2, 6))),
                               (r, r * 1.6, r), float(rng.uniform(150, 300)), name="basal_ganglia"))
    return tuple(blobs)


# Skull base (head coordinates): fossa floors, petrous ridges, clivus, sphenoid sinus.
_PETROUS = tuple(_Blob((s * 26.0, 12.0, -42.0), (24.0, 6.5, 8.0), 1600.0, angle=s * 0.75) for s in (-1, 1))
_CLIVUS = _Blob((0.0, 4.0, -52.0), (7.0, 14.0, 16.0), 1100.0)
_SINUS = _Blob((0.0, -22.0, -44.0), (13.0, 11.0, 10.0), -950.0)


def _floor(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height of the cranial cavity's floor: anterior fossa -28, middle -46, posterior fossa -64 (mm); the
    fossae are bowls, rising towards the sides."""
    out: np.ndarray = (np.float32(-28.0) - 18.0 * _ramp(y + 22.0, 10.0) - 18.0 * _ramp(y - 16.0, 10.0)
                       + np.float32(0.004) * x * x)
    return out


@dataclass(frozen=True)
class _Hemorrhage:
    kind: HemorrhageType
    hu: float
    centre: tuple[float, float, float]  # head coordinates; for convexity types the point on the inner table
    size: tuple[float, float, float]  # type-specific: semi-axes / (max thickness, angular half-width, z half-extent)
    theta: float = 0.0
    side: float = 1.0
    rim: float = 0.0
    rim_hu: float = 18.0
    texture: float = 0.0


def _draw_hemorrhage(rng: np.random.Generator, kind: HemorrhageType, z_plane: float, tan_tilt: float,
                     head: _Head) -> _Hemorrhage:
    """One hemorrhage of ``kind`` centred on the (possibly tilted) plane at head height ``z_plane``.

    A tilted plane's height changes along y (``z = z_plane - y tan(tilt)``): the hemorrhage's height follows
    its y so that the planes cut it however far anterior or posterior it lies.
    """
    hu = float(rng.uniform(50.0, 90.0))
    side = float(rng.choice([-1.0, 1.0]))
    theta = float(rng.uniform(0, 2 * math.pi))
    inner_y = (head.ay - head.scalp - head.skull) * 0.9 * math.sin(theta)
    z = z_plane - inner_y * tan_tilt
    if kind == "intraparenchymal":
        d = float(np.exp(rng.uniform(math.log(4.0), math.log(30.0))))
        axes = tuple(float(d / 2 * f) for f in rng.uniform(0.75, 1.25, size=3))
        s = math.sqrt(max(1.0 - (z_plane / head.az) ** 2, 0.05))
        bx, by = head.ax * s - head.scalp - head.skull, head.ay * s - head.scalp - head.skull
        margin = max(axes[:2]) + 6.0
        r = math.sqrt(rng.uniform(0, 1))
        x = r * math.cos(theta) * max(bx - margin, 0.0)
        y = r * math.sin(theta) * max(by - margin, 0.0)
        return _Hemorrhage(kind, hu, (x, y, z_plane - y * tan_tilt), (axes[0], axes[1], axes[2]), texture=float(rng.uniform(0, 5)),
                           rim=float(rng.uniform(1.5, 4.0)) if rng.random() < 0.4 else 0.0,
                           rim_hu=float(rng.uniform(12.0, 22.0)))
    if kind == "subdural":
        return _Hemorrhage(kind, float(rng.uniform(50.0, 85.0)), (0.0, 0.0, z),
                           (float(rng.uniform(2.5, 14.0)), float(rng.uniform(0.45, 1.1)), float(rng.uniform(20, 45))),
                           theta=theta)
    if kind == "epidural":
        return _Hemorrhage(kind, float(rng.uniform(55.0, 90.0)), (0.0, 0.0, z),
                           (float(rng.uniform(4.0, 20.0)), float(rng.uniform(0.22, 0.5)), float(rng.uniform(12, 28))),
                           theta=theta)
    if kind == "subarachnoid":
        return _Hemorrhage(kind, float(rng.uniform(50.0, 80.0)), (0.0, 0.0, z),
                           (float(rng.uniform(1.0, 2.2)), float(rng.uniform(0.3, 0.9)), float(rng.uniform(8, 25))),
                           theta=theta)
    # Intraventricular: a dependent layer filling the posterior part of one or both lateral ventricles.
    return _Hemorrhage(kind, float(rng.uniform(50.0, 80.0)), (0.0, 0.0, z_plane - 15.0 * tan_tilt),
                       (float(rng.uniform(0.25, 0.8)), 0.0, 0.0), side=side if rng.random() < 0.6 else 0.0)


#: Head heights (mm from the head centre) where each type is placed.
_Z_RANGE: dict[str, tuple[float, float]] = {
    "intraparenchymal": (-15.0, 60.0), "subdural": (-10.0, 55.0), "epidural": (-15.0, 55.0),
    "subarachnoid": (-5.0, 60.0), "intraventricular": (6.0, 24.0),
}


@dataclass
class _Fields:
    """Per-pixel quantities of one plane that anatomy and hemorrhages share (float32, head coordinates)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    theta: np.ndarray
    brain_depth: np.ndarray  # mm below the inner table (negative: in the skull or outside)
    cavity: np.ndarray  # weight of the cranial cavity (0..1)
    ventricle: np.ndarray  # weight of a lateral ventricle (0..1)
    vent_side: np.ndarray  # -1 / +1: which ventricle


class PhantomStudy:
    """One drawn phantom: anatomy, acquisition, hemorrhages and slice geometry; slices render on demand.

    :func:`generate_study` renders every slice into DICOM datasets; the training script renders only the slices
    it samples (:meth:`render`, :meth:`candidate_slices`).

    Parameters
    ----------
    seed : int
        Everything derives from it (anatomy and noise do not depend on ``lesion``).
    lesion : bool
        Place one or two hemorrhages.
    slices, rows, cols : int
        Number of slices and matrix size.
    hemorrhage : str, optional
        Type of the (first) hemorrhage; default: drawn from the seed.
    mimics : sequence of str
        Hard negatives to force (:data:`MIMIC_TYPES`).
    varied : bool
        Draw field of view, slice thickness, gantry tilt, head yaw and dose from the seed as well (default: an
        untilted 4.7-5 mm study of 220-250 mm field of view, covering the brain from the skull base up).
    """

    def __init__(self, seed: int, *, lesion: bool, slices: int = 32, rows: int = 512, cols: int = 512,
                 hemorrhage: str | None = None, mimics: Sequence[str] = (), varied: bool = False) -> None:
        if slices < 1 or rows < 16 or cols < 16:
            raise ValueError(f"phantom needs slices >= 1 and rows, cols >= 16 (got {slices}, {rows}, {cols})")
        for m in mimics:
            if m not in MIMIC_TYPES:
                raise ValueError(f"unknown mimic {m!r}; choose from {', '.join(MIMIC_TYPES)}")
        if hemorrhage is not None and hemorrhage not in HEMORRHAGE_TYPES:
            raise ValueError(f"unknown hemorrhage type {hemorrhage!r}; choose from {', '.join(HEMORRHAGE_TYPES)}")
        self.seed, self.rows, self.cols, self.slices = seed, rows, cols, slices
        self.mimics = tuple(mimics)
        # Separate streams: the same seed gives the same head and noise with or without a lesion.
        rng = np.random.default_rng([seed, 0x50AC5F])
        rng_lesion = np.random.default_rng([seed, 0x1E5])
        self.head = _make_head(rng, mimics)
        self.centre = (float(rng.uniform(-6, 6)), float(rng.uniform(-8, 8)), float(rng.uniform(-40, 40)))
        if varied:
            thickness = float(rng.choice(_THICKNESSES))
            fov = float(rng.uniform(200.0, 320.0))
            tilt = float(rng.uniform(5.0, 25.0)) if rng.random() < 0.5 else 0.0
            noise = float(np.exp(rng.uniform(math.log(2.5), math.log(12.0))))
            yaw = float(rng.normal(0, 6.0))
        else:
            fov = float(rng.uniform(220.0, 250.0))
            thickness = min(slices * 5.0, 150.0) / slices
            tilt, noise, yaw = 0.0, float(rng.uniform(3.0, 6.0)), 0.0
        if "partial_volume" in mimics:
            thickness = 5.0
        self.noise_seed = int(rng.integers(2**31))
        self.acquisition = Acquisition(fov_mm=round(fov, 3), slice_thickness_mm=thickness,
                                       gantry_tilt_deg=round(tilt, 3), noise_hu=round(noise, 3),
                                       yaw_deg=round(yaw, 3))
        self.spacing = fov / max(rows, cols)
        dz = thickness
        coverage = slices * dz
        # Where the slab lies along the head (head z of the first and last plane centres).
        kinds: list[HemorrhageType] = []
        if lesion:
            first = hemorrhage if hemorrhage is not None else HEMORRHAGE_TYPES[int(rng_lesion.integers(5))]
            kinds = [first]
            if rng_lesion.random() < 0.25:
                kinds.append(HEMORRHAGE_TYPES[int(rng_lesion.integers(5))])
        if "partial_volume" in mimics:
            z_lo = (float(rng.uniform(40, 70)) if rng.random() < 0.5 else float(rng.uniform(-62, -40)))
        elif varied:
            z_lo = float(rng.uniform(-60.0, 85.0 - min(coverage, 140.0)))
        else:
            z_lo = -55.0 + dz / 2 + max(0.0, (150.0 - coverage) / 2)
        if kinds and varied:
            # Make sure the slab crosses the first hemorrhage's range.
            lo, hi = _Z_RANGE[kinds[0]]
            want = float(rng_lesion.uniform(lo, hi))
            if not z_lo <= want <= z_lo + coverage - dz:
                z_lo = want - float(rng_lesion.uniform(0.2, 0.8)) * max(coverage - dz, 0.0)
        self.head_z = z_lo + dz * np.arange(slices)
        # Patient geometry: the table moves along z; a tilted gantry shears the stack (rows run along y and z).
        t = math.radians(tilt)
        self.col_dir = np.array([0.0, math.cos(t), -math.sin(t)])
        self.row_dir = np.array([1.0, 0.0, 0.0])
        self.normal = np.cross(self.row_dir, self.col_dir)
        x0 = -self.spacing * (cols - 1) / 2 + float(rng.uniform(-5, 5))
        y0 = -self.spacing * (rows - 1) / 2 * math.cos(t) + float(rng.uniform(-5, 5))
        cz = self.centre[2]
        # The plane through the head centre's column is at head height head_z: offset its first row.
        z_offset = self.spacing * (rows - 1) / 2 * math.sin(t)
        self.positions = [np.array([x0, y0, cz + hz + z_offset]) for hz in self.head_z]
        self.hemorrhages: list[_Hemorrhage] = []
        for i, kind in enumerate(kinds):
            lo, hi = _Z_RANGE[kind]
            in_slab = [float(h) for h in self.head_z if lo <= h <= hi]
            if not in_slab:
                if i == 0 and kind != "intraparenchymal":
                    kind = "intraparenchymal"
                    in_slab = [float(h) for h in self.head_z if -40 <= h <= 70]
                if not in_slab:
                    continue
            zc = float(rng_lesion.choice(in_slab)) + float(rng_lesion.uniform(-0.3, 0.3)) * dz
            self.hemorrhages.append(_draw_hemorrhage(rng_lesion, kind, zc, math.tan(t), self.head))
        self.sub_planes = 3 if thickness >= 2.5 else 2 if thickness > 1.25 else 1
        cols_mm = np.arange(cols, dtype=np.float32) * np.float32(self.spacing)
        rows_mm = np.arange(rows, dtype=np.float32) * np.float32(self.spacing)
        self._c, self._r = np.meshgrid(cols_mm, rows_mm)

    # ------------------------------------------------------------ geometry

    def _points(self, k: int, offset: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Head coordinates of every pixel of slice ``k``, moved ``offset`` mm along the normal."""
        p0 = self.positions[k] + offset * self.normal - np.asarray(self.centre)
        x = np.float32(p0[0]) + self._c * np.float32(self.row_dir[0]) + self._r * np.float32(self.col_dir[0])
        y = np.float32(p0[1]) + self._c * np.float32(self.row_dir[1]) + self._r * np.float32(self.col_dir[1])
        z = np.float32(p0[2]) + self._c * np.float32(self.row_dir[2]) + self._r * np.float32(self.col_dir[2])
        yaw = math.radians(self.acquisition.yaw_deg)
        if yaw:
            x, y = (x * np.float32(math.cos(yaw)) + y * np.float32(math.sin(yaw)),
                    -x * np.float32(math.sin(yaw)) + y * np.float32(math.cos(yaw)))
        return x, y, z

    def patient_point(self, k: int, row: float, col: float) -> tuple[float, float, float]:
        """Patient coordinates (mm) of pixel (row, col) of slice ``k``."""
        p = self.positions[k] + col * self.spacing * self.row_dir + row * self.spacing * self.col_dir
        return float(p[0]), float(p[1]), float(p[2])

    def candidate_slices(self) -> list[int]:
        """Slices whose thickness may reach a hemorrhage (a superset of the positive slices)."""
        tilt_span = self.spacing * self.rows * abs(self.col_dir[2])
        out = []
        for k, hz in enumerate(self.head_z):
            for h in self.hemorrhages:
                reach = {"intraparenchymal": h.size[2], "subdural": h.size[2], "epidural": h.size[2],
                         "subarachnoid": h.size[2] + 5, "intraventricular": 30.0}[h.kind]
                if abs(hz - h.centre[2]) <= reach + tilt_span / 2 + self.acquisition.slice_thickness_mm:
                    out.append(k)
                    break
        return out

    # ------------------------------------------------------------ rendering

    def render(self, k: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """HU image of slice ``k`` and, per hemorrhage, the fraction of each pixel that is blood.

        A thick slice averages sub-planes across its thickness (partial volume); noise is added once.
        """
        t = self.acquisition.slice_thickness_mm
        offsets = [t * ((i + 0.5) / self.sub_planes - 0.5) for i in range(self.sub_planes)]
        hu = np.zeros((self.rows, self.cols), dtype=np.float32)
        blood = [np.zeros((self.rows, self.cols), dtype=np.float32) for _ in self.hemorrhages]
        for off in offsets:
            h, b = self._render_plane(self._points(k, off))
            hu += h
            for acc, part in zip(blood, b, strict=True):
                acc += part
        n = np.float32(len(offsets))
        hu /= n
        for acc in blood:
            acc /= n
        hu += self._noise(k)
        return hu, blood

    def _noise(self, k: int) -> np.ndarray:
        rng = np.random.default_rng([self.noise_seed, k])
        white = rng.standard_normal(size=(self.rows, self.cols), dtype=np.float32)
        # CT noise is correlated over about a pixel: blur, then scale back to the intended level.
        sigma = 0.8
        smooth = ndimage.gaussian_filter(white, sigma)
        out: np.ndarray = smooth * np.float32(self.acquisition.noise_hu * 2 * math.sqrt(math.pi) * sigma)
        return out

    def _render_plane(self, p: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        head = self.head
        x, y, z = p
        theta = np.arctan2(y, x)
        r = np.hypot(x, y)
        irregular = 1.0 + sum(a * np.cos((k + 2) * theta + ph) for k, (a, ph) in enumerate(head.shape_coeffs))
        outline = irregular * (head.ax * head.ay) / np.sqrt((head.ay * np.cos(theta)) ** 2
                                                           + (head.ax * np.sin(theta)) ** 2)
        # Above the centre the head closes at the vertex; below it widens into the skull base and face.
        zz = np.where(z > 0, z / head.az, z / (2.2 * head.az))
        s = np.sqrt(np.clip(1.0 - zz**2, 0.0, 1.0)).astype(np.float32)
        depth = s * outline.astype(np.float32) - r  # mm inside the skin, along the ray from the axis
        skin = _ramp(depth, 1.0)
        skull_w = _ramp(depth - head.scalp, 0.8)
        brain_depth = depth - np.float32(head.scalp + head.skull)
        floor = _floor(x, y)
        above_floor = _ramp(z - floor, 1.5)
        cavity = _ramp(brain_depth, 0.8) * above_floor
        # Vault: cortical tables around the diploe; skull base: dense bone for 10 mm below the floor, then
        # pneumatised bone (ethmoid and mastoid air cells: a honeycomb of air and bone) and the sphenoid sinus.
        diploe = _ramp(depth - head.scalp - head.table, 0.6) * (1 - _ramp(brain_depth + head.table, 0.6))
        bone = np.float32(head.cortical_hu) + np.float32(head.diploe_hu - head.cortical_hu) * diploe
        below = 1 - above_floor
        base_bone = below * (1 - _ramp(floor - z - 10.0, 3.0))
        cells = np.cos(1.1 * x) * np.cos(1.1 * y + 0.7 * z) * np.cos(0.9 * z)
        pneumatised = np.float32(-850.0) + np.float32(1500.0) * _ramp(cells - 0.15, 0.25)
        bone = bone * (1 - below) + below * (base_bone * np.float32(900.0) + (1 - base_bone) * pneumatised)
        hu = np.float32(_HU_AIR) + np.float32(_HU_SCALP - _HU_AIR) * skin
        hu = hu + skull_w * (bone - hu)
        sinus = _ellipsoid(p, _SINUS.centre, _SINUS.axes)
        hu = hu + sinus * (np.float32(_SINUS.hu) - hu)
        fields = _Fields(x, y, z, theta, brain_depth, cavity, np.zeros_like(x), np.sign(x))
        brain = self._brain(fields)
        blood = [self._blood(h, fields) for h in self.hemorrhages]
        for h, w in zip(self.hemorrhages, blood, strict=True):
            if h.kind == "intraparenchymal" and h.rim > 0:
                rim = _ellipsoid(p, h.centre, tuple(a + h.rim for a in h.size), edge=1.0) * (1 - w)
                brain = brain + rim * (np.float32(h.rim_hu) - brain)
            clot = np.float32(h.hu) + np.float32(h.texture) * np.cos(0.9 * x + 1.3 * y)
            brain = brain + w * (clot - brain)
        hu = hu + cavity * (brain - hu)
        # Dense skull-base structures reach into the cavity.
        for blob in (*_PETROUS, _CLIVUS):
            w = _ellipsoid(p, blob.centre, blob.axes, blob.angle, edge=1.0)
            hu = hu + w * (np.float32(blob.hu) - hu)
        for blob in head.calcs:
            if abs(float(z.mean()) - blob.centre[2]) < blob.axes[2] + 40:
                w = _ellipsoid(p, blob.centre, blob.axes, edge=0.8)
                hu = hu + w * cavity * (np.float32(blob.hu) - hu)
        hu = hu + self._artefacts(fields, s) * skin
        blood_weights = [w * cavity for w in blood]
        return hu, blood_weights

    def _brain(self, f: _Fields) -> np.ndarray:
        """HU of the cranial cavity's content (before hemorrhages); fills ``f.ventricle``."""
        head = self.head
        if head.bone_only:
            return np.full_like(f.x, np.float32(head.csf_hu))
        bd = f.brain_depth
        s_cort = bd - np.float32(head.extra_axial_csf)  # depth below the brain surface
        white = _ramp(s_cort - 3.5, 2.5)
        brain = np.float32(head.grey_hu) + np.float32(head.white_hu - head.grey_hu) * white
        # Deep grey nuclei (basal ganglia, thalami).
        for side in (-1.0, 1.0):
            w = _ellipsoid((f.x, f.y, f.z), (side * 16.0, 2.0, 2.0), (9.0, 20.0, 11.0), edge=3.0)
            brain = brain + w * (np.float32(head.grey_hu - 2) - brain)
        # Sulci: CSF clefts from the surface inwards, twisting with height; extra-axial CSF on top.
        phase = np.float32(head.sulci) * f.theta + np.float32(head.sulcus_phase) + 0.09 * f.z
        frac = np.abs(np.mod(phase, np.float32(2 * math.pi)) - np.float32(math.pi)) / np.float32(head.sulci)
        r_here = np.maximum(np.hypot(f.x, f.y), np.float32(1.0))
        sulcus_dist = np.float32(math.pi / head.sulci) * r_here - frac * r_here  # mm from the sulcus centre line
        sulcus = (_ramp(np.float32(head.sulcus_width / 2) - sulcus_dist, 0.8)
                  * (1 - _ramp(s_cort - np.float32(head.sulcus_depth), 2.0)))
        csf = np.maximum(sulcus, 1 - _ramp(s_cort, 0.8))
        # Interhemispheric fissure (CSF) around the falx (dura), down to the corpus callosum.
        fissure_depth = np.clip((f.z - 15.0) * 2.0 + 60.0, 0, None)
        in_fissure = (1 - _ramp(np.abs(f.y) - fissure_depth, 4.0)) * (f.z > -20)
        fissure = _ramp(np.float32(1.6) - np.abs(f.x), 0.6) * in_fissure
        csf = np.maximum(csf, fissure)
        brain = brain + csf * (np.float32(head.csf_hu) - brain)
        falx_width = 1.6 if head.dense_falx else 1.0
        falx = _ramp(np.float32(falx_width / 2) - np.abs(f.x), 0.5) * in_fissure
        brain = brain + falx * (np.float32(head.falx_hu) - brain)
        # Lateral ventricles (frontal horns, bodies, atria) and the third ventricle.
        vs = head.ventricle_scale
        vent = np.zeros_like(f.x)
        for side in (-1.0, 1.0):
            body = _ellipsoid((f.x, f.y, f.z), (side * 7.5 * vs, -4.0, 18.0), (4.5 * vs, 24.0 * vs, 14.0), edge=1.2)
            atrium = _ellipsoid((f.x, f.y, f.z), (side * 15.0 * vs, 20.0, 12.0), (5.0 * vs, 9.0 * vs, 8.0), edge=1.2)
            vent = np.maximum(vent, np.maximum(body, atrium))
        third = _ellipsoid((f.x, f.y, f.z), (0.0, 4.0, 2.0), (1.2 + 1.2 * vs, 12.0, 9.0), edge=0.8)
        brain = brain + np.maximum(vent, third) * (np.float32(head.csf_hu) - brain)
        f.ventricle = vent
        result: np.ndarray = brain
        return result

    def _blood(self, h: _Hemorrhage, f: _Fields) -> np.ndarray:
        """Fraction of blood (0..1) of hemorrhage ``h`` at every pixel of the plane."""
        if self.head.bone_only:
            return np.zeros_like(f.x)
        if h.kind == "intraparenchymal":
            return _ellipsoid((f.x, f.y, f.z), h.centre, h.size, edge=0.7)
        if h.kind == "intraventricular":
            # The dependent (posterior, patient supine) part of the ventricle below a fluid level.
            side_ok = np.ones_like(f.x) if h.side == 0 else (f.vent_side == np.float32(h.side)).astype(np.float32)
            level = 30.0 - 40.0 * h.size[0]
            ivh: np.ndarray = f.ventricle * _ramp(f.y - np.float32(level), 1.5) * side_ok
            return ivh
        dtheta = np.abs(np.mod(f.theta - np.float32(h.theta) + np.float32(math.pi), np.float32(2 * math.pi))
                        - np.float32(math.pi))
        dz = (f.z - np.float32(h.centre[2])) / np.float32(h.size[2])
        if h.kind in ("subdural", "epidural"):
            u = (dtheta / np.float32(h.size[1])) ** 2 + dz**2
            # Crescent: thickness falls off slowly to thin tails; lens: a biconvex profile, steep ends.
            profile = np.sqrt(np.clip(1 - u, 0, 1)) if h.kind == "subdural" else np.clip(1 - u, 0, 1)
            thickness = np.float32(h.size[0]) * profile
            extra: np.ndarray = _ramp(f.brain_depth, 0.7) * _ramp(thickness - f.brain_depth, 0.8) * (thickness > 0.3)
            return extra
        # Subarachnoid: blood in the sulci and on the surface of one region.
        region = (1 - _ramp(dtheta - np.float32(h.size[1]), 0.1)) * (1 - _ramp(np.abs(dz) - 1, 0.2))
        s_cort = f.brain_depth - np.float32(self.head.extra_axial_csf)
        head = self.head
        phase = np.float32(head.sulci) * f.theta + np.float32(head.sulcus_phase) + 0.09 * f.z
        frac = np.abs(np.mod(phase, np.float32(2 * math.pi)) - np.float32(math.pi)) / np.float32(head.sulci)
        r_here = np.maximum(np.hypot(f.x, f.y), np.float32(1.0))
        dist = np.float32(math.pi / head.sulci) * r_here - frac * r_here
        width = max(head.sulcus_width, h.size[0])
        sulcus = _ramp(np.float32(width / 2) - dist, 0.8) * (1 - _ramp(s_cort - np.float32(head.sulcus_depth), 2))
        surface = _ramp(f.brain_depth, 0.6) * (1 - _ramp(s_cort - np.float32(h.size[0] * 0.5), 0.6))
        out: np.ndarray = np.maximum(sulcus, surface) * region
        return out

    def _artefacts(self, f: _Fields, s: np.ndarray) -> np.ndarray:
        """Beam hardening: cupping bias, a dark band between the petrous bones, streaks from dense bone."""
        head = self.head
        out = np.float32(head.bias_hu) * np.clip(1 - (np.hypot(f.x, f.y) / (head.ay * s + 1e-3)) ** 2, 0, 1)
        near_base = float(np.exp(-(((float(f.z.mean()) + 42.0) / 14.0) ** 2)))
        strength = 1.0 if self.mimics and "streaks" in self.mimics else near_base
        if strength > 0.02:
            rng = np.random.default_rng([self.seed, 0x57E])
            # Hounsfield bar: dark band joining the petrous apices.
            band = np.exp(-0.5 * ((f.y - 12.0) / 3.5) ** 2) * (np.abs(f.x) < 30)
            out = out - np.float32(head.streak_hu * strength) * band
            for _ in range(6):
                x0, y0 = float(rng.choice([-26.0, 26.0])), float(rng.uniform(0, 20))
                ang = float(rng.uniform(0, math.pi))
                dist = np.abs((f.x - x0) * math.sin(ang) - (f.y - y0) * math.cos(ang))
                sign = float(rng.choice([-1.0, 1.0]))
                out = out + np.float32(sign * head.streak_hu * 0.6 * strength) * np.exp(-0.5 * (dist / 1.2) ** 2)
        result: np.ndarray = out.astype(np.float32)
        return result


def _region(h: _Hemorrhage, centre_head: tuple[float, float, float]) -> str:
    """Side and region of a hemorrhage from its head coordinates (x left, y posterior, z up)."""
    x, y, z = centre_head
    side = "left" if x > 0 else "right"
    if h.kind == "intraventricular":
        return "both lateral ventricles" if h.side == 0 else f"{'left' if h.side > 0 else 'right'} lateral ventricle"
    lobe = "frontal" if y < -25 else "occipital" if y > 40 else "temporal" if z < 5 and abs(x) > 30 else "parietal"
    if h.kind in ("subdural", "epidural", "subarachnoid"):
        return f"{side} {lobe} convexity"
    return f"{side} {lobe}"


def _lesion_truth(study: PhantomStudy, i: int, maps: Sequence[np.ndarray]) -> Lesion | None:
    """Ground truth of hemorrhage ``i`` from its blood-fraction maps (one per slice)."""
    h = study.hemorrhages[i]
    px_area = study.spacing**2
    areas = [float((m >= BLOOD_FRACTION).sum()) * px_area for m in maps]
    seen = tuple(k for k, a in enumerate(areas) if a >= MIN_BLOOD_AREA_MM2)
    if not seen:
        return None
    k = max(seen, key=lambda j: areas[j])
    weights = np.where(maps[k] >= BLOOD_FRACTION, maps[k], 0.0)
    rows, cols = np.nonzero(weights)
    w = weights[rows, cols]
    r_c, c_c = float((rows * w).sum() / w.sum()), float((cols * w).sum() / w.sum())
    # For a crescent the weighted centre may fall outside the blood: take the nearest blood pixel to it.
    nearest = int(np.argmin((rows - r_c) ** 2 + (cols - c_c) ** 2))
    r_c, c_c = float(rows[nearest]), float(cols[nearest])
    centre = study.patient_point(k, r_c, c_c)
    pts = []
    for j in seen:
        rr, cc = np.nonzero(maps[j] >= BLOOD_FRACTION)
        pos = study.positions[j]
        pts.append(pos[None, :] + cc[:, None] * study.spacing * study.row_dir + rr[:, None] * study.spacing
                   * study.col_dir)
    allp = np.concatenate(pts)
    radius = float(np.sqrt(((allp - np.asarray(centre)) ** 2).sum(axis=1)).max()) + study.spacing
    half = (allp.max(axis=0) - allp.min(axis=0)) / 2 + study.spacing / 2
    volume = sum(areas[j] for j in seen) * study.acquisition.slice_thickness_mm / 1000.0
    head_c = tuple(float(v) for v in np.asarray(centre) - np.asarray(study.centre))
    return Lesion(
        centre_mm=tuple(round(v, 3) for v in centre),  # type: ignore[arg-type]
        radius_mm=round(radius, 3), semi_axes_mm=tuple(round(float(v), 3) for v in half),  # type: ignore[arg-type]
        hu=round(h.hu, 1), slice_indices=seen, pixel_centre=(round(r_c, 2), round(c_c, 2)), kind=h.kind,
        location=_region(h, head_c), volume_ml=round(volume, 3),  # type: ignore[arg-type]
    )


def generate_study(
    seed: int,
    *,
    lesion: bool,
    slices: int = 32,
    rows: int = 512,
    cols: int = 512,
    transfer_syntax_uid: str = ExplicitVRLittleEndian,
    study_instance_uid: str | None = None,
    hemorrhage: str | None = None,
    mimics: Sequence[str] = (),
    varied: bool = False,
) -> tuple[list[Dataset], GroundTruth]:
    """Generate one synthetic head-CT study in memory.

    Parameters
    ----------
    seed : int
        Everything (anatomy, hemorrhages, noise, UIDs, synthetic patient) derives from it.
    lesion : bool
        Place one or two hemorrhages (type ``hemorrhage``, else drawn from the seed).
    slices, rows, cols : int
        Number of axial slices and matrix size (any size).
    transfer_syntax_uid : str
        Transfer syntax of the datasets: Explicit/Implicit VR Little Endian, or a lossless one pydicom
        can encode (RLE Lossless, JPEG-LS Lossless, JPEG 2000 Lossless).
    study_instance_uid : str, optional
        Use this Study Instance UID instead of the one derived from ``seed``.
    hemorrhage : str, optional
        Type of the first hemorrhage (:data:`HEMORRHAGE_TYPES`).
    mimics : sequence of str
        Hard negatives to force (:data:`MIMIC_TYPES`).
    varied : bool
        Also draw field of view, slice thickness, gantry tilt, yaw and dose from the seed (see :class:`PhantomStudy`).

    Returns
    -------
    datasets : list of pydicom.Dataset
        One CT Image Storage dataset per slice with file meta, in slice order (InstanceNumber 1..N,
        inferior to superior).
    truth : GroundTruth
        Hemorrhages with type, location, patient and pixel coordinates and the slices that show them.
    """
    study = PhantomStudy(seed, lesion=lesion, slices=slices, rows=rows, cols=cols, hemorrhage=hemorrhage,
                         mimics=mimics, varied=varied)
    study_uid = UID(study_instance_uid) if study_instance_uid else _uid(seed, "study")
    series_uid = _uid(seed, study_uid, "series")
    for_uid = _uid(seed, study_uid, "frame-of-reference")
    date = dt.date(2026, 1, 1) + dt.timedelta(days=seed % 365)
    study_date = date.strftime("%Y%m%d")
    study_time = f"{8 + seed % 12:02d}{seed % 60:02d}00"

    datasets = []
    maps: list[list[np.ndarray]] = [[] for _ in study.hemorrhages]
    for k in range(slices):
        hu, blood = study.render(k)
        for acc, m in zip(maps, blood, strict=True):
            acc.append(m)
        stored = np.clip(np.rint(hu - _RESCALE_INTERCEPT), -32768, 32767).astype(np.int16)
        ds = _header(seed, k, study_uid, series_uid, for_uid, study_date, study_time, study)
        ds.PixelData = stored.tobytes()
        if transfer_syntax_uid not in _NATIVE:
            # Lossless only: the int16 HU values must survive; JPEG baseline cannot carry 16-bit data.
            ds.compress(transfer_syntax_uid, stored, generate_instance_uid=False)
        else:
            ds.file_meta.TransferSyntaxUID = UID(transfer_syntax_uid)
        datasets.append(ds)

    lesions = [t for i in range(len(study.hemorrhages)) if (t := _lesion_truth(study, i, maps[i])) is not None]
    truth = GroundTruth(
        seed=seed, study_instance_uid=str(study_uid), series_instance_uid=str(series_uid),
        has_lesion=bool(lesions), lesions=tuple(lesions), rows=rows, cols=cols, slices=slices,
        pixel_spacing_mm=(study.spacing, study.spacing), slice_spacing_mm=study.acquisition.slice_thickness_mm,
        positive_slices=tuple(sorted({k for les in lesions for k in les.slice_indices})),
        hemorrhage_types=tuple(sorted({les.kind for les in lesions})), mimics=study.mimics,
        calcifications=tuple(sorted({b.name for b in study.head.calcs})),
        acquisition={k: float(v) for k, v in asdict(study.acquisition).items()},
    )
    return datasets, truth


def _header(
    seed: int, k: int, study_uid: UID, series_uid: UID, for_uid: UID, study_date: str, study_time: str,
    study: PhantomStudy,
) -> Dataset:
    """Patient, study, series, frame of reference, equipment, image plane/pixel and CT image modules."""
    sop_uid = _uid(seed, series_uid, "instance", str(k))
    position = study.positions[k]
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
    ds.SliceThickness = _ds(study.acquisition.slice_thickness_mm)
    ds.KVP = "120"
    ds.SpacingBetweenSlices = _ds(study.acquisition.slice_thickness_mm * float(study.normal[2]))
    ds.GantryDetectorTilt = _ds(study.acquisition.gantry_tilt_deg)
    ds.SoftwareVersions = "pacsflow-phantom 2"
    ds.ConvolutionKernel = "BRAIN"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"{seed % 100000}"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(float(v)) for v in position]
    ds.ImageOrientationPatient = [_ds(float(v)) for v in (*study.row_dir, *study.col_dir)]
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds(float(position[2]))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = study.rows
    ds.Columns = study.cols
    ds.PixelSpacing = [_ds(study.spacing), _ds(study.spacing)]
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
    hemorrhage: str | None = None,
    mimics: Sequence[str] = (),
    varied: bool = False,
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
        seed, lesion=lesion, slices=slices, rows=rows, cols=cols, transfer_syntax_uid=transfer_syntax_uid,
        study_instance_uid=study_instance_uid, hemorrhage=hemorrhage, mimics=mimics, varied=varied,
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
    parser = argparse.ArgumentParser(prog="pacsflow phantom", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--studies", type=int, default=4, help="number of studies (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first study; study i uses seed + i")
    parser.add_argument("--lesion-fraction", type=float, default=0.5, help="fraction of studies with a lesion")
    parser.add_argument("--slices", type=int, default=32, help="slices per study (default 32)")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--cols", type=int, default=512)
    parser.add_argument("--transfer-syntax", choices=sorted(_TS_NAMES), default="explicit")
    parser.add_argument("--hemorrhage", choices=HEMORRHAGE_TYPES, help="type of hemorrhage (default: drawn)")
    parser.add_argument("--mimic", choices=MIMIC_TYPES, action="append", default=[],
                        help="hard negative to include (repeatable)")
    parser.add_argument("--varied", action="store_true",
                        help="draw field of view, slice thickness, gantry tilt and dose per study")
    args = parser.parse_args(argv)
    if not 0.0 <= args.lesion_fraction <= 1.0:
        parser.error("--lesion-fraction must be between 0 and 1")
    entries = []
    for i, lesion in enumerate(lesion_schedule(args.studies, args.lesion_fraction)):
        folder = args.out / f"study_{i:03d}"
        paths, truth = write_study(
            folder, args.seed + i, lesion=lesion, slices=args.slices, rows=args.rows, cols=args.cols,
            transfer_syntax_uid=_TS_NAMES[args.transfer_syntax], hemorrhage=args.hemorrhage, mimics=args.mimic,
            varied=args.varied,
        )
        entries.append({"folder": folder.name, "files": len(paths), **truth.to_dict()})
        kinds = ",".join(truth.hemorrhage_types) or "none"
        print(f"{folder}: {len(paths)} slices, lesion={truth.has_lesion} ({kinds})")
    (args.out / "ground_truth.json").write_text(json.dumps({"studies": entries}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
