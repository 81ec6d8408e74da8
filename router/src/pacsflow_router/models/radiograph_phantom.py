"""Synthetic chest radiographs (DX/CR, one frontal image per study) with pneumothorax ground truth.

A study is one frontal chest radiograph, displayed as a PA film is read (the patient's right on the image's left):
body outline and shoulders, two lungs with vascular markings that fade towards the periphery, mediastinum and
heart, both hemidiaphragms (the right one higher) and costophrenic angles, posterior and anterior ribs, clavicles,
the spine, scatter blur, vendor-style processing (gamma, unsharp masking, dynamic-range compression), collimator
shutters and quantum noise.

A study ``with pneumothorax`` carries one pneumothorax, apical or lateral, of any size: the visceral pleural line
(a thin bright line parallel to the chest wall) with pleural air peripheral to it, where the lung markings are
absent and the field is a little darker. Hard negatives (``MIMICS``) are drawn on either class so that no single
line or edge gives the answer: skin folds (an edge, markings continue across it and it runs out of the lung), the
medial border of a scapula over the upper lateral lung, device lines (a central venous catheter, an
endotracheal/nasogastric tube) and ECG leads with their electrodes.

The stored image varies as real senders do: Modality DX (Digital X-Ray Image Storage - For Presentation) or CR
(Computed Radiography Image Storage), matrix and pixel spacing, bit depth (8 to 16 bits stored), MONOCHROME1
(inverted: air is bright) or MONOCHROME2, with or without a VOI window (Window Center/Width, PS3.3 C.11.2) and a
Modality LUT (Rescale Slope/Intercept).

Everything is derived from ``seed``: the same seed gives the same pixels, headers and UIDs. Patient names and IDs
are synthetic (``PHANTOM^DX00042``), never real.

``pacsflow radiograph --out DIR --studies N --seed S --pneumothorax-fraction F`` writes studies and a
``ground_truth.json`` (see :func:`main`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

__all__ = [
    "MIMICS", "Pneumothorax", "RadiographTruth", "Radiograph", "generate_radiograph", "write_radiograph", "main",
]

#: Digital X-Ray Image Storage - For Presentation (PS3.4 B.5) and Computed Radiography Image Storage.
DX_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")
CR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")

#: Hard negatives: structures that give a line or an edge over the lung like a visceral pleural line does.
MIMICS = ("skin_fold", "scapula", "device_line", "ecg_leads")

#: Matrices (rows, cols) drawn when none is given: common detector formats, downsized ones included.
MATRICES = ((512, 512), (640, 512), (768, 640), (1024, 1024), (1024, 864), (1760, 1760), (2048, 1680))
#: (BitsAllocated, BitsStored) drawn when none is given.
BIT_DEPTHS = ((16, 10), (16, 12), (16, 14), (16, 15), (16, 16), (8, 8))

#: The longest side of the grid the anatomy is drawn on; larger images are interpolated up and get their noise
#: at full resolution (the model sees 256 x 256, so finer anatomy would be invisible to it anyway).
_WORK_MAX = 512

Side = Literal["right", "left"]
Kind = Literal["apical", "lateral"]


@dataclass(frozen=True)
class Pneumothorax:
    """Ground truth of one pneumothorax.

    Attributes
    ----------
    side : {"right", "left"}
        The patient's side (right = the image's left half).
    kind : {"apical", "lateral"}
        Where along the chest wall the pleural air collects.
    depth_mm : float
        Largest distance between the visceral pleural line and the chest wall (mm).
    pixel_centre : tuple of float
        (row, column) of the centroid of the pleural air, 0-based pixel centres of the stored matrix.
    pixel_box : tuple of float
        (first row, first column, last row, last column) of the pleural air.
    lung_fraction : float
        Fraction of that lung's projected area taken by pleural air.
    """

    side: Side
    kind: Kind
    depth_mm: float
    pixel_centre: tuple[float, float]
    pixel_box: tuple[float, float, float, float]
    lung_fraction: float


@dataclass(frozen=True)
class RadiographTruth:
    """What a synthetic radiograph contains and how it is stored."""

    seed: int
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    has_pneumothorax: bool
    pneumothorax: Pneumothorax | None
    mimics: tuple[str, ...]
    modality: str
    photometric_interpretation: str
    bits_stored: int
    voi_window: bool
    rows: int
    cols: int
    pixel_spacing_mm: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the layout of ``ground_truth.json``)."""
        return asdict(self)


@dataclass(frozen=True)
class Radiograph:
    """One generated radiograph: the dataset (with pixel data), its ground truth and the pleural-air mask.

    ``pleural_air`` is a boolean mask on the drawing grid (the stored matrix, or a smaller grid with the same
    extent when the matrix is larger than ``_WORK_MAX``); training scripts resample it to their own grid.
    """

    dataset: Dataset
    truth: RadiographTruth
    pleural_air: np.ndarray


def _ds(value: float) -> str:
    """A Decimal String (DS, max 16 characters)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _uid(seed: int, *parts: str) -> UID:
    return generate_uid(entropy_srcs=["pacsflow-radiograph", str(seed), *parts])


def _smooth(edge: np.ndarray, width: float) -> np.ndarray:
    """0 -> 1 over ``width`` mm around ``edge`` = 0 (partial-volume edges instead of steps)."""
    out: np.ndarray = np.clip(0.5 + edge / max(width, 1e-6), 0.0, 1.0)
    return out


@dataclass(frozen=True)
class _Anatomy:
    """Random anatomy of one chest (mm; x to the image's right, y downwards, origin at the top-left corner)."""

    x0: float  # midline
    y_apex: float  # top of the lungs
    lung_h: float  # apex to the top of the diaphragm domes
    lung_w: float  # lateral extent of each lung from the midline
    exponent: float  # superellipse exponent of the lung outline (2 = ellipse, higher = squarer)
    heart_w: float
    heart_h: float
    heart_shift: float  # heart centre, to the patient's left of the midline
    mediastinum_w: float
    right_dome_rise: float  # how much higher the right hemidiaphragm sits
    rib_pitch: float
    rib_thickness: float
    soft_tissue: float  # extra soft tissue outside the ribs
    markings: float  # amplitude of the lung markings


def _make_anatomy(rng: np.random.Generator, width: float, height: float) -> _Anatomy:
    lung_h = float(rng.uniform(205.0, 255.0))
    lung_w = float(rng.uniform(120.0, 150.0))
    # Shrink the chest when the field is too small for it (landscape detectors, small fields).
    # Tight collimation may cut the lateral soft tissue, never the lungs.
    scale = min(1.0, (height - 70.0) / (lung_h + 70.0), (width - 20.0) / (2 * lung_w + 20.0))
    lung_h *= scale
    lung_w *= scale
    y_apex = float(rng.uniform(0.08, 0.16)) * height
    y_apex = min(y_apex, height - lung_h - 45.0 * scale)
    return _Anatomy(
        x0=width / 2 + float(rng.uniform(-12, 12)), y_apex=max(y_apex, 10.0), lung_h=lung_h, lung_w=lung_w,
        exponent=float(rng.uniform(2.0, 2.8)), heart_w=float(rng.uniform(62, 85)) * scale,
        heart_h=float(rng.uniform(52, 68)) * scale, heart_shift=float(rng.uniform(18, 32)) * scale,
        mediastinum_w=float(rng.uniform(20, 30)) * scale, right_dome_rise=float(rng.uniform(8, 22)) * scale,
        rib_pitch=lung_h / float(rng.uniform(9.0, 10.5)), rib_thickness=float(rng.uniform(8.0, 11.5)) * scale,
        soft_tissue=float(rng.uniform(12, 35)) * scale, markings=float(rng.uniform(0.7, 1.3)),
    )


@dataclass(frozen=True)
class _Lung:
    """One lung's outline fields on the drawing grid."""

    mask: np.ndarray  # soft 0..1
    depth: np.ndarray  # mm inwards from the chest-wall outline (apex and lateral wall), negative outside
    angle: np.ndarray  # direction from the lung centre: 0 = lateral, pi/2 = apical
    cx: float
    cy: float
    sign: float  # -1 for the image's left (patient right), +1 for the image's right


def _lungs(a: _Anatomy, x: np.ndarray, y: np.ndarray) -> tuple[_Lung, _Lung, np.ndarray, np.ndarray]:
    """Both lungs, the mediastinum+heart mask and the below-diaphragm mask."""
    b = a.lung_h * 0.58
    cy = a.y_apex + b
    half_x = a.lung_w * 0.52
    heart_cx = a.x0 + a.heart_shift
    dome_top = a.y_apex + a.lung_h
    heart_cy = dome_top - a.heart_h * 0.55
    heart = ((x - heart_cx) / a.heart_w) ** 2 + ((y - heart_cy) / a.heart_h) ** 2
    heart_mask = _smooth((1.0 - np.sqrt(heart)) * a.heart_h, 2.0)
    # Upper mediastinum, with the aortic knob bulging to the patient's left.
    knob = 10.0 * np.exp(-(((y - (a.y_apex + 0.3 * a.lung_h)) / 18.0) ** 2))
    med = a.mediastinum_w + np.where(x > a.x0, knob, 0.0)
    mediastinum = np.maximum(_smooth(med - np.abs(x - a.x0), 2.0) * (y > a.y_apex - 40), heart_mask)
    below = np.zeros_like(x)
    lungs = []
    for sign in (-1.0, 1.0):
        cx = a.x0 + sign * half_x * 1.05
        dx, dy = (x - cx) / half_x, (y - cy) / b
        f = (np.abs(dx) ** a.exponent + np.abs(dy) ** a.exponent) ** (1.0 / a.exponent)
        radius = np.hypot(x - cx, y - cy)
        depth = (1.0 - f) * radius / np.maximum(f, 1e-3)
        rise = a.right_dome_rise if sign < 0 else 0.0
        dome = dome_top - rise + 38.0 * ((x - cx) / (half_x * 1.1)) ** 2
        side_below = _smooth(y - dome, 2.5) * (sign * (x - a.x0) > 0)
        below = np.maximum(below, side_below)
        mask = _smooth(depth, 2.0) * (1.0 - side_below) * (1.0 - mediastinum) * (sign * (x - a.x0) > 0)
        angle = np.arctan2(-(y - cy), sign * (x - cx))
        lungs.append(_Lung(mask.astype(np.float32), depth.astype(np.float32), angle.astype(np.float32), cx, cy, sign))
    return lungs[0], lungs[1], mediastinum, below


def _band(x: np.ndarray, y: np.ndarray, xs: np.ndarray, ys: np.ndarray, thickness: float) -> np.ndarray:
    """Soft band of ``thickness`` mm around the curve y = ys(xs) (vertical distance, slope-corrected)."""
    yc = np.interp(x, xs, ys, left=np.nan, right=np.nan)
    slope = np.gradient(ys, xs)
    cos = 1.0 / np.sqrt(1.0 + np.interp(x, xs, slope) ** 2)
    dist = np.abs(y - yc) * cos
    out: np.ndarray = np.nan_to_num(_smooth(thickness / 2 - dist, 1.2), nan=0.0)
    return out


def _curve_image(shape: tuple[int, int], pts_mm: np.ndarray, mm_per_px: float, width_mm: float) -> np.ndarray:
    """A thin line along a polyline (mm), drawn by splatting dense samples and blurring (peak ~1)."""
    seg = np.diff(pts_mm, axis=0)
    length = float(np.sum(np.hypot(seg[:, 0], seg[:, 1])))
    n = max(int(length / (mm_per_px * 0.3)), 2)
    t = np.linspace(0, len(pts_mm) - 1, n)
    px = np.interp(t, np.arange(len(pts_mm)), pts_mm[:, 0]) / mm_per_px - 0.5
    py = np.interp(t, np.arange(len(pts_mm)), pts_mm[:, 1]) / mm_per_px - 0.5
    img = np.zeros(shape, dtype=np.float32)
    keep = (px >= 0) & (px < shape[1] - 1) & (py >= 0) & (py < shape[0] - 1)
    px, py = px[keep], py[keep]
    c0, r0 = np.floor(px).astype(int), np.floor(py).astype(int)
    fc, fr = (px - c0).astype(np.float32), (py - r0).astype(np.float32)
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc), (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        np.add.at(img, (r0 + dr, c0 + dc), w)
    sigma = max(width_mm / 2.355 / mm_per_px, 0.5)
    # Sample density along the line is 1 / (0.3 px); a blurred line of unit density peaks at ~1/(sqrt(2 pi) s).
    out: np.ndarray = ndimage.gaussian_filter(img, sigma) * np.float32(0.3 * math.sqrt(2 * math.pi) * sigma)
    return out


def _bezier(p0: Sequence[float], p1: Sequence[float], p2: Sequence[float], n: int = 64) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    return np.asarray((1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t**2 * np.asarray(p2))


def _markings(rng: np.random.Generator, shape: tuple[int, int], mm_per_px: float) -> np.ndarray:
    """Vessel-like lung markings: ridges of band-limited noise at two scales (0..1)."""
    out = np.zeros(shape, dtype=np.float32)
    for scale_mm, weight in ((7.0, 0.6), (3.5, 0.4)):
        n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), scale_mm / mm_per_px)
        n /= float(n.std()) + 1e-6
        out += weight * np.exp(-((n / 0.22) ** 2))
    return out


def _place_pneumothorax(rng: np.random.Generator, a: _Anatomy, kind: Kind | None) -> tuple[Side, Kind, float, float,
                                                                                              float]:
    """(side, kind, depth mm, centre angle, angular half-width) of a pneumothorax."""
    side: Side = "right" if rng.random() < 0.5 else "left"
    chosen: Kind = kind or ("apical" if rng.random() < 0.45 else "lateral")
    if chosen == "apical":
        depth = float(np.exp(rng.uniform(math.log(9.0), math.log(40.0))))
        centre = float(rng.uniform(1.05, 1.5))
        half = float(rng.uniform(0.6, 1.0))
    else:
        depth = float(np.exp(rng.uniform(math.log(10.0), math.log(min(70.0, a.lung_w * 0.5)))))
        centre = float(rng.uniform(-0.1, 0.5))
        half = float(rng.uniform(0.6, 1.1))
    return side, chosen, depth, centre, half


def _render(
    rng: np.random.Generator, a: _Anatomy, shape: tuple[int, int], mm_per_px: float,
    ptx: tuple[Side, Kind, float, float, float] | None, mimics: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Density image (0 = air, ~1 = dense; bright = dense, as MONOCHROME2 shows it) and the pleural-air mask."""
    rows, cols = shape
    xs = (np.arange(cols, dtype=np.float32) + 0.5) * mm_per_px
    ys = (np.arange(rows, dtype=np.float32) + 0.5) * mm_per_px
    x, y = np.meshgrid(xs, ys)
    right, left, mediastinum, below = _lungs(a, x, y)

    # Body: trunk below the shoulders, neck above; thicker in the middle (more attenuation).
    shoulder_y = a.y_apex - 5.0
    trunk_half = a.lung_w + a.soft_tissue + 8.0
    neck_half = 0.32 * trunk_half
    t = _smooth(y - shoulder_y, 35.0)
    half = neck_half + (trunk_half - neck_half) * np.sqrt(t)
    body = _smooth(half - np.abs(x - a.x0), 3.0)
    thickness = np.sqrt(np.clip(1.0 - ((x - a.x0) / (half + 25.0)) ** 2, 0.0, 1.0))
    density = 0.02 + body * (0.35 + 0.25 * thickness)
    # Arms at the sides on some films.
    if rng.random() < 0.4:
        for sign in (-1.0, 1.0):
            arm_x = a.x0 + sign * (trunk_half + float(rng.uniform(10, 30)))
            arm = _smooth(22.0 - np.abs(x - arm_x), 4.0) * (y > shoulder_y + 20)
            density += 0.3 * arm * (1 - body)

    air = np.zeros(shape, dtype=np.float32)
    line = np.zeros(shape, dtype=np.float32)
    if ptx is not None:
        side, _kind, depth_mm, centre, half_angle = ptx
        lung = right if side == "right" else left
        # Angular profile: full depth at the centre angle, tapering to 0 at +-half_angle (a cap, not a band).
        delta = np.angle(np.exp(1j * (lung.angle - centre)))
        profile = np.clip(np.cos(np.clip(delta / half_angle, -1.0, 1.0) * math.pi / 2), 0.0, 1.0) ** 0.7
        reach = depth_mm * profile
        air = (_smooth(reach - lung.depth, 1.0) * lung.mask * (profile > 0.05)).astype(np.float32)
        width = float(rng.uniform(0.8, 1.8))
        line = (np.exp(-0.5 * ((lung.depth - reach) / (width / 2.355)) ** 2) * (profile > 0.15) * lung.mask
                * (reach > 3.0)).astype(np.float32)

    # Lungs: dark fields with markings fading from the hila towards the chest wall.
    marks = _markings(rng, shape, mm_per_px)
    for lung in (right, left):
        hilum = np.hypot(x - (a.x0 + lung.sign * (a.mediastinum_w + 15.0)), y - (a.y_apex + 0.45 * a.lung_h))
        fade = 0.45 + 0.55 * np.exp(-hilum / 80.0)
        lung_marks = lung.mask * (1.0 - air) * marks * fade * 0.14 * a.markings
        density = density - 0.36 * lung.mask * body + lung_marks
    density = density - 0.06 * air + 0.12 * line
    if ptx is not None:
        # The collapsed lung is a little denser than the normal one.
        collapsed = right if ptx[0] == "right" else left
        density += 0.02 * collapsed.mask * (1.0 - air) * min(ptx[2] / 40.0, 1.0)

    # Mediastinum, heart and the abdomen below the domes.
    density += 0.17 * mediastinum * body + 0.18 * below * body
    # Spine through the mediastinum, with faint vertebral end plates.
    spine = _smooth(21.0 - np.abs(x - a.x0), 2.0) * (y > a.y_apex - 60)
    plates = 0.5 + 0.5 * np.cos(2 * math.pi * (y - a.y_apex) / (a.rib_pitch * 0.95))
    density += spine * (0.03 + 0.015 * plates) * (0.4 + 0.6 * mediastinum)
    # Ribs, all at once: the arc index u is an integer along each rib's centre line, so the distance to the
    # nearest integer (times the pitch) is the distance to the nearest rib. Posterior arcs leave the spine,
    # rise a little and curve down laterally; the fainter anterior arcs run down and medially.
    dxa = np.abs(x - a.x0)
    reach = (dxa > 12.0) & (dxa < a.lung_w + a.soft_tissue)
    u_post = (y - (a.y_apex - 18.0) + 0.22 * dxa - 0.0030 * dxa**2) / a.rib_pitch
    cos_post = 1.0 / np.sqrt(1.0 + (0.006 * dxa - 0.22) ** 2)
    d_post = np.abs(u_post - np.round(u_post)) * a.rib_pitch * cos_post
    in_range = (u_post > -0.5) & (u_post < 10.5) & reach
    band = _smooth(a.rib_thickness / 2 - d_post, 1.2)
    cortex = band - _smooth(a.rib_thickness / 2 - 1.5 - d_post, 1.2)
    density += (0.07 * band + 0.05 * cortex) * body * in_range
    u_ant = (y - (a.y_apex - 18.0 + 0.65 * a.rib_pitch) - 0.42 * (a.lung_w - dxa)) / a.rib_pitch
    d_ant = np.abs(u_ant - np.round(u_ant)) * a.rib_pitch / math.sqrt(1.0 + 0.42**2)
    ant_range = (u_ant > -0.5) & (u_ant < 7.5) & reach & (dxa > 45.0)
    density += 0.035 * _smooth(a.rib_thickness * 0.6 - d_ant, 1.2) * body * ant_range
    # Clavicles: from the sternal notch laterally and up.
    for sign in (-1.0, 1.0):
        ts = np.linspace(0, 1, 48)
        cx = a.x0 + sign * (18.0 + ts * (a.lung_w * 1.02))
        cy = a.y_apex + 18.0 - 26.0 * ts + 7.0 * np.sin(math.pi * ts)
        o = np.argsort(cx)
        density += 0.13 * _band(x, y, cx[o], cy[o], float(rng.uniform(11, 15))) * body

    for mimic in mimics:
        density += _mimic(mimic, rng, a, right if rng.random() < 0.5 else left, x, y, shape, mm_per_px) * body
    return density.astype(np.float32), air > 0.5


def _mimic(name: str, rng: np.random.Generator, a: _Anatomy, lung: _Lung, x: np.ndarray, y: np.ndarray,
           shape: tuple[int, int], mm_per_px: float) -> np.ndarray:
    """Density added by one hard negative."""
    s = lung.sign
    lateral = a.x0 + s * a.lung_w
    if name == "skin_fold":
        # An edge (not a line): denser on the medial side, fading over a centimetre; it runs past the lung.
        x_top = lateral - s * float(rng.uniform(10, 45))
        pts = _bezier((x_top, a.y_apex + float(rng.uniform(20, 70))),
                      (x_top - s * float(rng.uniform(0, 30)), a.y_apex + 0.6 * a.lung_h),
                      (x_top + s * float(rng.uniform(-10, 20)), a.y_apex + a.lung_h + 40.0))
        o = np.argsort(pts[:, 1])
        xc = np.interp(y, pts[o, 1], pts[o, 0], left=np.nan, right=np.nan)
        signed = s * (xc - x)  # > 0 medial to the fold
        edge = np.exp(-np.clip(signed, 0, None) / 10.0) * (signed > 0)
        out: np.ndarray = np.nan_to_num(0.05 * edge, nan=0.0)
        return out
    if name == "scapula":
        # The scapula's medial border: a gently curved edge over the upper lateral lung, denser laterally.
        top = (lateral - s * float(rng.uniform(25, 50)), a.y_apex - 20.0)
        bottom = (lateral - s * float(rng.uniform(0, 20)), a.y_apex + float(rng.uniform(0.45, 0.6)) * a.lung_h)
        pts = _bezier(top, ((top[0] + bottom[0]) / 2 - s * 10.0, (top[1] + bottom[1]) / 2), bottom)
        xc = np.interp(y, pts[:, 1], pts[:, 0], left=np.nan, right=np.nan)
        signed = s * (x - xc)  # > 0 lateral to the border: over the scapula
        body_ = _smooth(signed, 1.0) * _smooth(bottom[1] - y, 15.0)
        out = np.nan_to_num(0.06 * body_ + 0.03 * np.exp(-0.5 * (signed / 1.2) ** 2), nan=0.0)
        return out
    if name == "device_line":
        if rng.random() < 0.5:
            # Central venous catheter: from the shoulder over the apex into the superior vena cava.
            start = (lateral + s * 10.0, a.y_apex - float(rng.uniform(0, 25)))
            ctrl = (a.x0 + s * float(rng.uniform(30, 90)), a.y_apex + float(rng.uniform(0, 40)))
            end = (a.x0 - float(rng.uniform(5, 25)), a.y_apex + float(rng.uniform(0.3, 0.5)) * a.lung_h)
            line: np.ndarray = 0.22 * _curve_image(shape, _bezier(start, ctrl, end), mm_per_px, float(rng.uniform(1.5, 2.5)))
            return line
        # Endotracheal / nasogastric tube: two parallel walls down the midline.
        gap = float(rng.uniform(6, 9))
        out = np.zeros(shape, dtype=np.float32)
        y_end = a.y_apex + float(rng.uniform(0.2, 0.9)) * a.lung_h
        bend = float(rng.uniform(-12, 12))
        for off in (-gap / 2, gap / 2):
            pts = _bezier((a.x0 + off, 0.0), (a.x0 + off + bend, y_end / 2), (a.x0 + off - bend / 2, y_end))
            out += 0.10 * _curve_image(shape, pts, mm_per_px, 1.5)
        return out
    if name == "ecg_leads":
        out = np.zeros(shape, dtype=np.float32)
        for _ in range(int(rng.integers(2, 4))):
            ex = a.x0 + float(rng.uniform(-1.1, 1.1)) * a.lung_w
            ey = a.y_apex + float(rng.uniform(0.0, 1.0)) * a.lung_h
            r = np.hypot(x - ex, y - ey)
            out += 0.12 * np.exp(-0.5 * ((r - 5.0) / 0.8) ** 2) + 0.05 * (r < 5.0)
            end = (ex + float(rng.uniform(-150, 150)), float(rng.choice([0.0, y.max()])))
            ctrl = (ex + float(rng.uniform(-80, 80)), ey + float(rng.uniform(-80, 80)))
            out += 0.15 * _curve_image(shape, _bezier((ex, ey), ctrl, end), mm_per_px, 1.2)
        return out
    raise ValueError(f"unknown mimic {name!r}; choose from {MIMICS}")


def generate_radiograph(
    seed: int,
    *,
    pneumothorax: bool,
    kind: Kind | None = None,
    mimics: Sequence[str] | None = None,
    rows: int | None = None,
    cols: int | None = None,
    modality: Literal["DX", "CR"] | None = None,
    photometric_interpretation: Literal["MONOCHROME1", "MONOCHROME2"] | None = None,
    bits: tuple[int, int] | None = None,
    voi_window: bool | None = None,
    study_instance_uid: str | None = None,
) -> Radiograph:
    """Generate one synthetic frontal chest radiograph in memory.

    Parameters
    ----------
    seed : int
        Everything (anatomy, findings, noise, storage variant, UIDs, synthetic patient) derives from it.
    pneumothorax : bool
        Draw one pneumothorax (apical or lateral, 9-70 mm deep).
    kind : {"apical", "lateral"}, optional
        Force the kind of pneumothorax (default: drawn at random).
    mimics : sequence of str, optional
        Hard negatives to draw (subset of :data:`MIMICS`); default: each with probability 0.3.
    rows, cols : int, optional
        Matrix (default: drawn from :data:`MATRICES`); the field of view stays 340-430 mm wide.
    modality : {"DX", "CR"}, optional
    photometric_interpretation : {"MONOCHROME1", "MONOCHROME2"}, optional
    bits : (int, int), optional
        (BitsAllocated, BitsStored), e.g. ``(16, 12)`` or ``(8, 8)`` (default: drawn from :data:`BIT_DEPTHS`).
    voi_window : bool, optional
        Write a Window Center/Width (default: half of the images).
    study_instance_uid : str, optional
        Use this Study Instance UID instead of the one derived from ``seed``.

    Returns
    -------
    Radiograph
        The dataset (with file meta), its ground truth and the pleural-air mask.
    """
    rng = np.random.default_rng([seed, 0xC4E57])
    if rows is None or cols is None:
        rows, cols = MATRICES[int(rng.integers(len(MATRICES)))]
    if rows < 64 or cols < 64:
        raise ValueError(f"a radiograph phantom needs at least 64 x 64 pixels (got {rows} x {cols})")
    modality = modality or ("DX" if rng.random() < 0.5 else "CR")
    photometric = photometric_interpretation or ("MONOCHROME1" if rng.random() < 0.5 else "MONOCHROME2")
    allocated, stored = bits or BIT_DEPTHS[int(rng.integers(len(BIT_DEPTHS)))]
    with_voi = bool(rng.random() < 0.5) if voi_window is None else voi_window
    if mimics is None:
        mimics = tuple(m for m in MIMICS if rng.random() < 0.3)
    for m in mimics:
        if m not in MIMICS:
            raise ValueError(f"unknown mimic {m!r}; choose from {MIMICS}")

    width_mm = float(rng.uniform(300.0, 430.0))
    spacing = width_mm / cols
    height_mm = spacing * rows
    work_scale = max(1.0, max(rows, cols) / _WORK_MAX)
    work = (max(int(round(rows / work_scale)), 16), max(int(round(cols / work_scale)), 16))
    work_mm = width_mm / work[1]
    anatomy = _make_anatomy(rng, width_mm, height_mm)
    placed = _place_pneumothorax(rng, anatomy, kind) if pneumothorax else None
    density, air = _render(rng, anatomy, work, work_mm, placed, tuple(mimics))

    # Detector and processing: scatter blur, a heel-effect gradient, gamma and unsharp masking.
    density = ndimage.gaussian_filter(density, float(rng.uniform(0.4, 0.9)) / work_mm)
    density = density * (1.0 + float(rng.uniform(-0.06, 0.06)) * (np.arange(work[0])[:, None] / work[0] - 0.5))
    density = np.clip(density, 0.0, None) ** float(rng.uniform(0.8, 1.25))
    if rng.random() < 0.6:
        low = ndimage.gaussian_filter(density, float(rng.uniform(4.0, 10.0)) / work_mm)
        density = density + float(rng.uniform(0.3, 1.0)) * (density - low)
    if rng.random() < 0.7:
        # Dynamic-range compression ("equalisation") as vendors' chest processing does: lungs come up to mid-grey.
        wide = ndimage.gaussian_filter(density, float(rng.uniform(25.0, 60.0)) / work_mm)
        density = density - float(rng.uniform(0.2, 0.7)) * (wide - float(wide.mean()))
    if rng.random() < 0.3:
        # Collimator shutters: unexposed borders, the brightest values of the image.
        m_top, m_bottom, m_left, m_right = (int(float(rng.uniform(0.0, 25.0)) / work_mm) for _ in range(4))
        shutter = np.zeros(work, dtype=bool)
        shutter[:m_top], shutter[work[0] - m_bottom:] = True, True
        shutter[:, :m_left], shutter[:, work[1] - m_right:] = True, True
        density = np.where(shutter, np.float32(1.1), density)
    if work != (rows, cols):
        density = ndimage.zoom(density, (rows / work[0], cols / work[1]), order=1, grid_mode=True, mode="nearest")
        density = density[:rows, :cols]
    density = density + rng.standard_normal((rows, cols)).astype(np.float32) * np.float32(rng.uniform(0.006, 0.02))

    # Stored values: bright = dense for MONOCHROME2, inverted for MONOCHROME1 (PS3.3 C.7.6.3.1.2).
    top = float(2**stored - 1)
    offset = float(rng.uniform(0.02, 0.12)) * top
    span = float(rng.uniform(0.55, 0.85)) * top
    values = offset + np.clip(density, 0.0, 1.2) / 1.2 * span
    if photometric == "MONOCHROME1":
        values = top - values
    pixels = np.clip(np.rint(values), 0, top).astype(np.uint8 if allocated == 8 else np.uint16)

    study_uid = UID(study_instance_uid) if study_instance_uid else _uid(seed, "study")
    series_uid = _uid(seed, study_uid, "series")
    sop_uid = _uid(seed, series_uid, "instance")
    ds = _header(seed, modality, study_uid, series_uid, sop_uid, rows, cols, spacing, photometric,
                 allocated, stored, "PA" if rng.random() < 0.7 else "AP")
    if modality == "DX" or rng.random() < 0.3:
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
    if with_voi:
        lo, hi = np.percentile(pixels[::4, ::4], [2.0, 98.0])
        centre = (lo + hi) / 2 + float(rng.uniform(-0.05, 0.05)) * (hi - lo)
        ds.WindowCenter = _ds(round(centre, 1))
        ds.WindowWidth = _ds(round(max(hi - lo, 2.0) * float(rng.uniform(0.9, 1.3)), 1))
    ds.PixelData = pixels.tobytes()

    truth_ptx = None
    if placed is not None:
        rr, cc = np.nonzero(air)
        if len(rr) == 0:
            raise RuntimeError(f"seed {seed}: pneumothorax placement left no pleural air; report this seed")
        f_r, f_c = rows / work[0], cols / work[1]
        grid = np.meshgrid((np.arange(work[1]) + 0.5) * work_mm, (np.arange(work[0]) + 0.5) * work_mm)
        right, left, _, _ = _lungs(anatomy, grid[0], grid[1])
        lung_area = float(((right if placed[0] == "right" else left).mask > 0.5).sum())
        truth_ptx = Pneumothorax(
            side=placed[0], kind=placed[1], depth_mm=round(placed[2], 2),
            pixel_centre=(round(float(rr.mean() + 0.5) * f_r - 0.5, 2), round(float(cc.mean() + 0.5) * f_c - 0.5, 2)),
            pixel_box=(round(float(rr.min()) * f_r, 1), round(float(cc.min()) * f_c, 1),
                       round(float(rr.max() + 1) * f_r - 1, 1), round(float(cc.max() + 1) * f_c - 1, 1)),
            lung_fraction=round(len(rr) / max(lung_area, 1.0), 4),
        )
    truth = RadiographTruth(
        seed=seed, study_instance_uid=str(study_uid), series_instance_uid=str(series_uid),
        sop_instance_uid=str(sop_uid), has_pneumothorax=truth_ptx is not None, pneumothorax=truth_ptx,
        mimics=tuple(mimics), modality=modality, photometric_interpretation=photometric, bits_stored=stored,
        voi_window=with_voi, rows=rows, cols=cols, pixel_spacing_mm=round(spacing, 6),
    )
    return Radiograph(dataset=ds, truth=truth, pleural_air=air)


def _header(seed: int, modality: str, study_uid: UID, series_uid: UID, sop_uid: UID, rows: int, cols: int,
            spacing: float, photometric: str, allocated: int, stored: int, view: str) -> Dataset:
    """Patient, study, series, equipment, image pixel and DX/CR image attributes."""
    sop_class = DX_STORAGE if modality == "DX" else CR_STORAGE
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if modality == "DX" else ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    date = dt.date(2026, 1, 1) + dt.timedelta(days=seed % 365)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = f"{8 + seed % 12:02d}{seed % 60:02d}00"
    ds.AccessionNumber = f"PFX{seed:07d}"
    ds.Modality = modality
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "pacsflow"
    ds.InstitutionName = "Phantom General Hospital"
    ds.ReferringPhysicianName = "REFERRER^PHANTOM"
    ds.StudyDescription = "XR Chest"
    ds.SeriesDescription = f"Chest {view}"
    ds.ManufacturerModelName = "pacsflow chest radiograph phantom"
    ds.PatientName = f"PHANTOM^{modality}{seed:05d}"
    ds.PatientID = f"PX{seed:06d}"
    ds.PatientBirthDate = f"{1940 + seed % 60}0101"
    ds.PatientSex = "MF"[seed % 2]
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.SoftwareVersions = "pacsflow-radiograph 1"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = f"{seed % 100000}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["R", "F"] if view == "AP" else ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = cols
    # DX keeps the detector's spacing in Imager Pixel Spacing; both are given (the phantom has no magnification).
    ds.ImagerPixelSpacing = [_ds(spacing), _ds(spacing)]
    ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
    ds.BitsAllocated = allocated
    ds.BitsStored = stored
    ds.HighBit = stored - 1
    ds.PixelRepresentation = 0
    if modality == "DX":
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    return ds


def write_radiograph(out_dir: str | Path, seed: int, *, pneumothorax: bool, **kwargs: Any) -> tuple[Path, RadiographTruth]:
    """Generate a radiograph (see :func:`generate_radiograph`) and write it as ``out_dir/IM0001.dcm`` (PS3.10)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    radiograph = generate_radiograph(seed, pneumothorax=pneumothorax, **kwargs)
    path = out / "IM0001.dcm"
    pydicom.dcmwrite(path, radiograph.dataset, enforce_file_format=True)
    return path, radiograph.truth


def main(argv: list[str] | None = None) -> int:
    """``pacsflow radiograph``: write studies to ``--out/study_NNN/IM0001.dcm`` plus ``--out/ground_truth.json``."""
    parser = argparse.ArgumentParser(prog="pacsflow radiograph", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--studies", type=int, default=4, help="number of studies (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first study; study i uses seed + i")
    parser.add_argument("--pneumothorax-fraction", type=float, default=0.5,
                        help="fraction of studies with a pneumothorax (default 0.5)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.pneumothorax_fraction <= 1.0:
        parser.error("--pneumothorax-fraction must be between 0 and 1")
    entries = []
    for i in range(args.studies):
        positive = math.floor((i + 1) * args.pneumothorax_fraction) > math.floor(i * args.pneumothorax_fraction)
        folder = args.out / f"study_{i:03d}"
        path, truth = write_radiograph(folder, args.seed + i, pneumothorax=positive)
        entries.append({"folder": folder.name, "file": path.name, **truth.to_dict()})
        print(f"{folder}: {truth.modality} {truth.rows}x{truth.cols} {truth.photometric_interpretation}, "
              f"pneumothorax={truth.has_pneumothorax}, mimics={','.join(truth.mimics) or '-'}")
    (args.out / "ground_truth.json").write_text(json.dumps({"studies": entries}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
