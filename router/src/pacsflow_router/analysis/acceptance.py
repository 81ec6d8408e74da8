"""Series acceptance criteria: which series of a study a model may analyse, and why the others may not (pure).

A model declares the input it was trained for in its ``model.json`` (:class:`~.manifest.InputRequirements`); a use
case may narrow it in ``AIUseCase.spec.match`` (:class:`~pacsflow_router.config.Match`). :func:`effective_requirements`
intersects the two; :func:`evaluate_series` checks one series' headers against the result and returns every failed
criterion as a :class:`Failure` (a bounded reason code for metrics and a short message without patient data);
:func:`select_series` evaluates every candidate series of a study and chooses the best one that passes.

How the model's requirement and the use case's narrowing combine (docs/input-requirements.md):

============================  =====================================================================================
field                         effective requirement
============================  =====================================================================================
modalities, body parts        intersection of the two lists (an empty list places no limit)
body-part patterns            a description must match one pattern of each list that is not empty
contrast                      ``any`` defers to the other; ``with`` against ``without`` admits nothing
slice thickness/count,        intersection of the ranges (an empty intersection admits nothing)
pixel spacing
minimum matrix                the larger of the two
kernel pattern                both patterns must match
ImageType required/excluded   union (more required values, more refused values)
view positions                the model's list (radiographs; a use case narrows with a series description pattern)
axial deviation, gantry       the smaller of the two
tilt, spacing deviation
============================  =====================================================================================

A model whose ``output.geometry`` is ``image`` (one 2D image, e.g. a radiograph) skips the volume-only criteria:
slice count, slice thickness, orientation, gantry tilt, spacing gaps and the pixel-geometry requirement.

The order procedure code is a hook for later: :func:`select_series` takes ``procedure_codes`` (empty until orders
reach the pipeline); a code in the model's ``procedureCodes`` then establishes the anatomy when Body Part Examined is
empty and no description pattern matches.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from pydicom.dataset import Dataset

from ..config import Match, NumberRange
from ..domain import Series, Study
from .domaincheck import check_domain
from .headers import frame_indices, functional_group_value
from .manifest import InputRequirements, ModelManifest, Range
from .matching import is_candidate

__all__ = [
    "Reason", "REASONS", "Failure", "Requirements", "SeriesVerdict", "Selection", "effective_requirements",
    "evaluate_series", "select_series", "series_geometry", "Geometry", "screen", "check_chosen",
]

log = logging.getLogger(__name__)

#: Why a study was not analysed: the bounded vocabulary of ``pacsflow_studies_not_analysed_total{reason}``.
#: Listed in the order a series' failures are reported: the first failure is the study's reason.
Reason = Literal[
    "modality", "image-type", "body-part", "view", "contrast", "slice-count", "matrix", "pixel-spacing",
    "slice-thickness", "kernel", "orientation", "spacing-gap", "out-of-domain",
]
REASONS: tuple[Reason, ...] = get_args(Reason)

# Secondary Capture Image Storage and its multi-frame variants (PS3.4 B.5): screenshots, dose screens.
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# Relative tolerance on a unit-vector norm before the geometry counts as unusable.
_EPS = 1e-6


@dataclass(frozen=True)
class Failure:
    """One failed criterion: a bounded reason code and a message a user reads (never patient data)."""

    code: Reason
    message: str


@dataclass(frozen=True)
class Requirements:
    """The effective input requirements of one use case: the model's, narrowed by the use case's match.

    ``None`` / empty means "no limit"; an empty interval (``low > high``) admits nothing.
    """

    modalities: frozenset[str] | None
    body_parts: frozenset[str] | None
    body_part_patterns: tuple[tuple[str, ...], ...]
    """Groups of patterns; a description must match one pattern of every group."""
    procedure_codes: frozenset[str]
    contrast: Literal["without", "with", "any", "none"]
    """``none``: the model and the use case disagree, nothing is admitted."""
    slice_thickness_mm: tuple[float | None, float | None] | None
    slice_count: tuple[float | None, float | None] | None
    min_matrix: int | None
    pixel_spacing_mm: tuple[float | None, float | None] | None
    kernel_patterns: tuple[str, ...]
    image_type_required: frozenset[str]
    image_type_excluded: frozenset[str]
    view_positions: frozenset[str] | None
    max_axial_deviation_degrees: float | None
    max_gantry_tilt_degrees: float | None
    max_spacing_deviation: float | None
    volume: bool
    """Whether the volume-only criteria apply (``output.geometry`` is ``volume``)."""


@dataclass(frozen=True)
class SeriesVerdict:
    """The acceptance result of one candidate series."""

    position: int
    """1-based position of the series among the study's candidate series (safe to log: not a UID)."""
    series: Series
    failures: tuple[Failure, ...]

    @property
    def passed(self) -> bool:
        """Whether every criterion passed."""
        return not self.failures


@dataclass(frozen=True)
class Selection:
    """The acceptance decision for one study and use case.

    ``series`` is the chosen series (None when nothing passed or nothing was a candidate); ``failure`` the reason
    the study is not analysed (None when a series was chosen or there was no candidate: "not applicable");
    ``explanation`` says why, for the audit (no UIDs, no patient data).
    """

    series: Series | None
    failure: Failure | None
    verdicts: tuple[SeriesVerdict, ...]
    explanation: str

    @property
    def applicable(self) -> bool:
        """Whether the study had at least one candidate series."""
        return bool(self.verdicts)


# ---------------------------------------------------------------- effective requirements


def _pair(value: Range | NumberRange | None) -> tuple[float | None, float | None] | None:
    return None if value is None else (value.min, value.max)


def _intersect(a: Range | None, b: NumberRange | None) -> tuple[float | None, float | None] | None:
    pa, pb = _pair(a), _pair(b)
    if pa is None or pb is None:
        return pa or pb
    lows = [v for v in (pa[0], pb[0]) if v is not None]
    highs = [v for v in (pa[1], pb[1]) if v is not None]
    return (max(lows) if lows else None, min(highs) if highs else None)


def _smaller(a: float | None, b: float | None) -> float | None:
    values = [v for v in (a, b) if v is not None]
    return min(values) if values else None


def _codes(values: Sequence[str]) -> frozenset[str]:
    return frozenset(v.strip().upper() for v in values)


def _list_intersection(a: Sequence[str], b: Sequence[str]) -> frozenset[str] | None:
    sa, sb = _codes(a), _codes(b)
    if a and b:
        return sa & sb
    return sa or sb or None


def effective_requirements(manifest: ModelManifest, match: Match) -> Requirements:
    """The model's input requirements narrowed by a use case's match (see the module docstring's table).

    Parameters
    ----------
    manifest : ModelManifest
        The pinned model's manifest (``requirements`` and ``output.geometry`` are used).
    match : Match
        The use case's ``spec.match``.

    Returns
    -------
    Requirements
        What a series must satisfy for this use case.
    """
    req: InputRequirements = manifest.requirements
    contrast: Literal["without", "with", "any", "none"] = req.contrast
    if match.contrast not in (None, "any"):
        contrast = match.contrast if req.contrast in ("any", match.contrast) else "none"
    min_matrix = max((v for v in (req.min_matrix, match.min_matrix) if v is not None), default=None)
    return Requirements(
        modalities=_list_intersection(req.modalities, match.modalities),
        body_parts=_list_intersection(req.body_parts, match.body_parts_examined),
        body_part_patterns=tuple(tuple(group) for group in (req.body_part_patterns, match.body_part_patterns)
                                 if group),
        procedure_codes=frozenset(req.procedure_codes),
        contrast=contrast,
        slice_thickness_mm=_intersect(req.slice_thickness_mm, match.slice_thickness_mm),
        slice_count=_intersect(req.slice_count, match.slice_count),
        min_matrix=min_matrix,
        pixel_spacing_mm=_intersect(req.pixel_spacing_mm, match.pixel_spacing_mm),
        kernel_patterns=tuple(p for p in (req.kernel_pattern, match.kernel_pattern) if p is not None),
        image_type_required=_codes(req.image_type_required) | _codes(match.image_type_required),
        image_type_excluded=_codes(req.image_type_excluded) | _codes(match.image_type_excluded),
        view_positions=_list_intersection(req.view_positions, ()),
        max_axial_deviation_degrees=_smaller(req.max_axial_deviation_degrees, match.max_axial_deviation_degrees),
        max_gantry_tilt_degrees=_smaller(req.max_gantry_tilt_degrees, match.max_gantry_tilt_degrees),
        max_spacing_deviation=_smaller(req.max_spacing_deviation, match.max_spacing_deviation),
        volume=manifest.output.geometry == "volume",
    )


# ---------------------------------------------------------------- geometry (classic and enhanced images)


def _attribute(header: Dataset, frame: int, keyword: str, sequence: str) -> Any:
    """A top-level attribute, else the same attribute in the enhanced image's functional group ``sequence``."""
    value = header.get(keyword)
    if value is not None and value != "":
        return value
    return functional_group_value(header, frame, sequence, keyword)


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == count and all(math.isfinite(v) for v in out) else None


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


@dataclass(frozen=True)
class Geometry:
    """The slice geometry of a series, from its headers (None where a header does not say)."""

    orientation: tuple[float, ...] | None
    """Image Orientation (Patient) of the first slice (six direction cosines)."""
    normal: np.ndarray | None
    """Unit slice normal (row x column)."""
    positions: np.ndarray | None
    """(N, 3) Image Position (Patient) per slice, in slice order; None unless every slice has one."""
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    gantry_tilt: float | None


def series_geometry(series: Series) -> Geometry:
    """Orientation, positions, pixel spacing, slice thickness and gantry tilt of a series.

    Classic images carry these at the top level; enhanced (multi-frame) images in their Shared and Per-frame
    Functional Groups (Plane Orientation, Plane Position, Pixel Measures; PS3.3 C.7.6.16.2), which are read
    when the top level lacks them.
    """
    frames = frame_indices(series)
    first, frame0 = series.slices[0].header, frames[0]
    orientation = _floats(_attribute(first, frame0, "ImageOrientationPatient", "PlaneOrientationSequence"), 6)
    normal = None
    if orientation is not None:
        n = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
        norm = float(np.linalg.norm(n))
        normal = n / norm if norm > _EPS else None
    positions = [_floats(_attribute(s.header, f, "ImagePositionPatient", "PlanePositionSequence"), 3)
                 for s, f in zip(series.slices, frames, strict=True)]
    spacing = _floats(_attribute(first, frame0, "PixelSpacing", "PixelMeasuresSequence"), 2)
    return Geometry(
        orientation=orientation,
        normal=normal,
        positions=None if any(p is None for p in positions) else np.asarray(positions, dtype=float),
        pixel_spacing=None if spacing is None else (spacing[0], spacing[1]),
        slice_thickness=_float(_attribute(first, frame0, "SliceThickness", "PixelMeasuresSequence")),
        gantry_tilt=_float(first.get("GantryDetectorTilt")),
    )


# ---------------------------------------------------------------- the criteria


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _range_text(bounds: tuple[float | None, float | None], unit: str = "") -> str:
    low, high = bounds
    if low is not None and high is not None:
        if low > high:
            return "nothing (the use case's range and the model's do not overlap)"
        return f"{_fmt(low)}-{_fmt(high)}{unit}"
    if low is not None:
        return f"at least {_fmt(low)}{unit}"
    return f"at most {_fmt(high if high is not None else math.inf)}{unit}"


def _outside(bounds: tuple[float | None, float | None] | None, value: float) -> bool:
    if bounds is None:
        return False
    low, high = bounds
    return (low is not None and value < low) or (high is not None and value > high)


def _image_type(series: Series, req: Requirements) -> Failure | None:
    header = series.slices[0].header
    sop_class = str(header.get("SOPClassUID", "") or "")
    if sop_class.startswith(_SECONDARY_CAPTURE):
        return Failure("image-type", "a secondary capture (screenshot or dose screen), not an acquired image")
    values = [str(v).strip().upper() for v in (header.get("ImageType") or [])]
    missing = sorted(req.image_type_required - set(values))
    if missing:
        return Failure("image-type", f"Image Type is {'/'.join(values[:3]) or 'empty'}, the model needs "
                       f"{'/'.join(sorted(req.image_type_required))} (missing {'/'.join(missing)})")
    refused = [v for v in values if v in req.image_type_excluded]
    if refused:
        kind = {"LOCALIZER": "a localizer (scout)", "DERIVED": "a derived image (reformat or processed)",
                "SECONDARY": "a secondary capture"}.get(refused[0], f"Image Type {refused[0]}")
        return Failure("image-type", f"{kind}, not an original acquisition")
    return None


def _descriptions(series: Series) -> list[str]:
    header = series.slices[0].header
    return [series.description, str(header.get("StudyDescription", "") or "")]


def _body_part(series: Series, req: Requirements, procedure_codes: Sequence[str]) -> Failure | None:
    if req.body_parts is None and not req.body_part_patterns:
        return None
    stated = series.body_part.strip().upper()
    allowed = "/".join(sorted(req.body_parts or ())) or "the model's anatomy"
    if stated:
        # A stated Body Part Examined is never overridden by a description (PS3.3 C.7.3.1 defines it).
        if req.body_parts is not None and stated not in req.body_parts:
            return Failure("body-part", f"body part {stated[:16]}, the model needs {allowed}")
        return None
    if req.body_part_patterns and any(
        all(any(re.search(p, text) for p in group) for group in req.body_part_patterns)
        for text in _descriptions(series) if text
    ):
        return None
    if req.procedure_codes and req.procedure_codes & {c.strip() for c in procedure_codes}:
        return None
    return Failure("body-part", f"body part not stated and no description names it; the model needs {allowed}")


def _view(series: Series, req: Requirements) -> Failure | None:
    if req.view_positions is None:
        return None
    stated = str(series.slices[0].header.get("ViewPosition", "") or "").strip().upper()
    if not stated or stated in req.view_positions:
        return None  # Type 2 in DX and Type 3 in CR: an image without one is not refused for it
    return Failure("view", f"view position {stated[:16]}, the model takes {'/'.join(sorted(req.view_positions))}")


def _contrast(series: Series, req: Requirements) -> Failure | None:
    if req.contrast == "any":
        return None
    header = series.slices[0].header
    given = bool(str(header.get("ContrastBolusAgent", "") or "").strip()) or bool(
        header.get("ContrastBolusAgentSequence"))
    if req.contrast == "none":
        return Failure("contrast", "the use case's contrast requirement contradicts the model's: nothing passes")
    if req.contrast == "without" and given:
        return Failure("contrast", "contrast agent given, the model needs a non-contrast series")
    if req.contrast == "with" and not given:
        return Failure("contrast", "no contrast agent stated, the model needs a contrast-enhanced series")
    return None


def _slice_count(series: Series, req: Requirements) -> Failure | None:
    n = len(series.slices)
    if not _outside(req.slice_count, n):
        return None
    assert req.slice_count is not None
    low, high = req.slice_count
    noun = "slice" if n == 1 else "slices"
    if low is not None and n < low and (high is None or low <= high):
        return Failure("slice-count", f"{n} {noun}, the model needs at least {_fmt(low)}")
    if high is not None and n > high and (low is None or low <= high):
        return Failure("slice-count", f"{n} {noun}, the model takes at most {_fmt(high)}")
    return Failure("slice-count", f"{n} {noun}, the model takes {_range_text(req.slice_count)}")


def _matrix(series: Series, req: Requirements) -> Failure | None:
    if req.min_matrix is None:
        return None
    rows, cols = (min(s.pixels.shape[i] for s in series.slices) for i in (0, 1))
    if min(rows, cols) >= req.min_matrix:
        return None
    return Failure("matrix", f"matrix {rows}x{cols}, the model needs at least {req.min_matrix}")


def _pixel_spacing(geometry: Geometry, header: Dataset, req: Requirements) -> Failure | None:
    if req.pixel_spacing_mm is None:
        return None
    spacing = geometry.pixel_spacing
    if spacing is not None and min(spacing) <= 0:
        spacing = None  # "0\\0" is sent by some CR/DX devices that do not know the patient's scale
    if spacing is None and not req.volume:
        # A projection radiograph states the detector's spacing (PS3.3 C.8.11.4) rather than the patient's.
        raw = _floats(header.get("ImagerPixelSpacing"), 2)
        spacing = None if raw is None or min(raw) <= 0 else (raw[0], raw[1])
    if spacing is None:
        return Failure("pixel-spacing", "pixel spacing not stated")
    if any(_outside(req.pixel_spacing_mm, v) for v in spacing):
        return Failure("pixel-spacing", f"pixel spacing {_fmt(spacing[0])} x {_fmt(spacing[1])} mm, the model "
                       f"takes {_range_text(req.pixel_spacing_mm, ' mm')}")
    return None


def _kernel(header: Dataset, req: Requirements) -> Failure | None:
    if not req.kernel_patterns:
        return None
    value = header.get("ConvolutionKernel")
    if value is None or value == "":
        return None  # Type 3: a series without one passes (documented in the manifest)
    # Multi-valued on some scanners (e.g. Siemens "Hr38h\3"): matched as the DICOM backslash-joined string.
    text = value if isinstance(value, str) else "\\".join(str(v) for v in value)
    if all(re.search(p, text) for p in req.kernel_patterns):
        return None
    return Failure("kernel", f"reconstruction kernel {text[:32]} is not one the model was trained on")


def _steps(geometry: Geometry) -> np.ndarray | None:
    """Slice-to-slice position differences (N-1, 3), or None without positions or with one slice."""
    if geometry.positions is None or len(geometry.positions) < 2:
        return None
    return np.diff(geometry.positions, axis=0)


def _slice_thickness(geometry: Geometry, req: Requirements) -> Failure | None:
    if req.slice_thickness_mm is None:
        return None
    thickness = geometry.slice_thickness
    if thickness is None or thickness <= 0:
        steps = _steps(geometry)
        if steps is not None and geometry.normal is not None:
            gaps = np.abs(steps @ geometry.normal)
            thickness = float(np.median(gaps)) if gaps.size else None
    if thickness is None:
        return Failure("slice-thickness", "slice thickness not stated and not derivable from slice positions")
    if _outside(req.slice_thickness_mm, thickness):
        return Failure("slice-thickness", f"slice thickness {_fmt(thickness)} mm, the model takes "
                       f"{_range_text(req.slice_thickness_mm, ' mm')}")
    return None


def _orientation(geometry: Geometry, req: Requirements) -> Failure | None:
    if geometry.normal is None:
        return Failure("orientation", "no usable Image Orientation (Patient): the slice plane is unknown")
    axial = math.degrees(math.acos(min(1.0, abs(float(geometry.normal[2])))))
    if req.max_axial_deviation_degrees is not None and axial > req.max_axial_deviation_degrees + 1e-6:
        return Failure("orientation", f"slices {axial:.0f} degrees from axial, the model takes at most "
                       f"{_fmt(req.max_axial_deviation_degrees)}")
    if req.max_gantry_tilt_degrees is None:
        return None
    tilt = abs(geometry.gantry_tilt) if geometry.gantry_tilt is not None else 0.0
    steps = _steps(geometry)
    if steps is not None:
        lengths = np.linalg.norm(steps, axis=1)
        usable = lengths > 1e-3
        if usable.any():
            # A tilted gantry shears the stack: positions step along the table (z), not along the slice normal.
            cosines = np.clip(np.abs(steps[usable] @ geometry.normal) / lengths[usable], 0.0, 1.0)
            tilt = max(tilt, float(np.degrees(np.arccos(np.median(cosines)))))
    if tilt > req.max_gantry_tilt_degrees + 1e-6:
        return Failure("orientation", f"gantry tilt {tilt:.0f} degrees, the model takes at most "
                       f"{_fmt(req.max_gantry_tilt_degrees)}")
    return None


def _spacing(geometry: Geometry, req: Requirements) -> Failure | None:
    if req.max_spacing_deviation is None:
        return None
    steps = _steps(geometry)
    if steps is None or geometry.normal is None:
        return None  # one slice (the slice count criterion speaks), or no positions (orientation speaks)
    gaps = np.abs(steps @ geometry.normal)
    median = float(np.median(gaps))
    if median <= 1e-3:
        return Failure("spacing-gap", "slices share one position (several acquisitions in one series?)")
    deviation = np.abs(gaps - median) / median
    worst = int(np.argmax(deviation))
    if float(deviation[worst]) <= req.max_spacing_deviation:
        return None
    what = "a gap" if gaps[worst] > median else "overlapping slices"
    return Failure("spacing-gap", f"{what} of {_fmt(float(gaps[worst]))} mm after slice {worst + 1} of "
                   f"{len(gaps) + 1} (median spacing {_fmt(median)} mm): missing or extra slices")


def evaluate_series(series: Series, req: Requirements, *, procedure_codes: Sequence[str] = ()) -> tuple[Failure, ...]:
    """Every acceptance criterion ``series`` fails, in the order of :data:`REASONS` (empty: it passes).

    Parameters
    ----------
    series : Series
        A loaded series (headers and decoded pixels, slices in order).
    req : Requirements
        The effective requirements (:func:`effective_requirements`).
    procedure_codes : sequence of str
        Procedure codes of the study's order, when known (a fallback for the anatomy).

    Returns
    -------
    tuple of Failure
        The failed criteria; messages carry values and limits, never patient data or UIDs.
    """
    if not series.slices:
        return (Failure("slice-count", "0 slices: no decodable image"),)
    header = series.slices[0].header
    failures: list[Failure | None] = []
    if req.modalities is not None and series.modality.strip().upper() not in req.modalities:
        failures.append(Failure("modality", f"modality {series.modality[:16] or 'not stated'}, the model needs "
                                f"{'/'.join(sorted(req.modalities))}"))
    failures.append(_image_type(series, req))
    geometry = series_geometry(series)
    if req.volume and failures[-1] is None and (
            geometry.normal is None or geometry.positions is None or geometry.pixel_spacing is None):
        # CT dose screens and other images without pixel geometry cannot be placed in a volume.
        failures.append(Failure("image-type", "no pixel geometry (Image Position/Orientation, Pixel Spacing): "
                                "not a cross-sectional image"))
    failures += [_body_part(series, req, procedure_codes), _view(series, req), _contrast(series, req)]
    if req.volume:
        failures.append(_slice_count(series, req))
    failures += [_matrix(series, req), _pixel_spacing(geometry, header, req)]
    if req.volume:
        failures.append(_slice_thickness(geometry, req))
    failures.append(_kernel(header, req))
    if req.volume and geometry.normal is not None and geometry.positions is not None:
        failures += [_orientation(geometry, req), _spacing(geometry, req)]
    found = [f for f in failures if f is not None]
    order = {code: i for i, code in enumerate(REASONS)}
    return tuple(sorted(found, key=lambda f: order[f.code]))


# ---------------------------------------------------------------- choosing among series


def _rank(verdict: SeriesVerdict) -> tuple[float, float, float, int]:
    """Sort key of a passing series, best first: most slices, thinnest, closest to axial, first received."""
    geometry = series_geometry(verdict.series)
    thickness = geometry.slice_thickness if geometry.slice_thickness is not None else math.inf
    axial = 0.0 if geometry.normal is None else math.acos(min(1.0, abs(float(geometry.normal[2]))))
    return (-len(verdict.series.slices), thickness, axial, verdict.position)


def _failure_summary(verdicts: Sequence[SeriesVerdict]) -> str:
    counts = Counter(v.failures[0].code for v in verdicts if v.failures)
    return ", ".join(f"{n} failed {code}" for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def select_series(manifest: ModelManifest, match: Match, study: Study, *,
                  procedure_codes: Sequence[str] = ()) -> Selection:
    """Choose the series a use case analyses, or say why none qualifies.

    Candidates are the series that match the use case at all (:func:`~.matching.is_candidate`: modality, the use
    case's and the model's intersected, and series description). Each candidate is checked against the effective
    requirements; among those that pass, the best is chosen by :func:`_rank` (most slices, then thinnest slices,
    then closest to axial, then first received). When none passes, the study's reason is the first failure of the
    candidate that failed the fewest criteria (ties: the most slices).

    Parameters
    ----------
    manifest : ModelManifest
        The pinned model's manifest.
    match : Match
        The use case's match (applicability and narrowing).
    study : Study
        The loaded study.
    procedure_codes : sequence of str
        The order's procedure codes, when known.

    Returns
    -------
    Selection
        The chosen series or the failure, every candidate's verdict, and an explanation for the audit.
    """
    req = effective_requirements(manifest, match)
    candidates = [s for s in study.series
                  if s.slices and is_candidate(s, req.modalities, match.series_description_pattern)]
    verdicts = tuple(
        SeriesVerdict(position=i, series=s, failures=evaluate_series(s, req, procedure_codes=procedure_codes))
        for i, s in enumerate(candidates, start=1)
    )
    if not verdicts:
        return Selection(None, None, (), "no series matches the use case (modality, series description)")
    for v in verdicts:
        log.debug("series %s (candidate %d): %s", v.series.series_uid, v.position,
                  "; ".join(f"{f.code}: {f.message}" for f in v.failures) or "passes")
    passing = sorted((v for v in verdicts if v.passed), key=_rank)
    n = len(verdicts)
    if passing:
        chosen = passing[0]
        others = [v for v in verdicts if v is not chosen]
        why = f"chose series {chosen.position} of {n}"
        failed = _failure_summary(others)
        if failed:
            why += f": {failed}"
        if len(passing) > 1:
            runner_up = passing[1].series.slices
            why += (f"; {len(passing)} passed, chosen has the most slices ({len(chosen.series.slices)})"
                    if len(chosen.series.slices) > len(runner_up)
                    else f"; {len(passing)} passed with {len(runner_up)} slices, chosen is the thinnest, then the "
                         "closest to axial")
        return Selection(chosen.series, None, verdicts, why)
    closest = min(verdicts, key=lambda v: (len(v.failures), -len(v.series.slices), v.position))
    reason = closest.failures[0]
    why = (f"no series passes ({n} candidate{'s' if n > 1 else ''}: {_failure_summary(verdicts)}); "
           f"closest: series {closest.position}: " + "; ".join(f.message for f in closest.failures))
    return Selection(None, reason, verdicts, why)


def screen(manifest: ModelManifest, match: Match, study: Study, *, procedure_codes: Sequence[str] = (),
           timings: dict[str, float] | None = None, domain: bool = True) -> Selection:
    """Everything that decides whether a use case may analyse a study, before any inference: the acceptance
    criteria (:func:`select_series`), then the model's input-domain check on the chosen series
    (:func:`check_chosen`). ``timings``, when given, receives ``acceptance`` and ``domain`` seconds.

    ``domain=False`` stops after the acceptance criteria: the pipeline runs the domain check beside preprocessing
    and asks the model only once it passed, so the verdict is the same.
    """
    t0 = time.monotonic()
    selection = select_series(manifest, match, study, procedure_codes=procedure_codes)
    if timings is not None:
        timings["acceptance"] = time.monotonic() - t0
    return check_chosen(manifest, selection, timings=timings) if domain else selection


def check_chosen(manifest: ModelManifest, selection: Selection, *,
                 timings: dict[str, float] | None = None) -> Selection:
    """The model's input-domain check (:func:`.domaincheck.check_domain`) on the series the acceptance criteria chose.

    A chosen series outside the domain makes the study "not analysed" with reason ``out-of-domain`` (the domain
    check runs on the chosen series only: the other candidates failed their criteria, or are smaller
    reconstructions of the same acquisition). A selection without a chosen series is returned as it is.
    ``timings``, when given, receives ``domain`` seconds.

    Returns
    -------
    Selection
        ``selection`` itself when its series is in the domain, else the ``out-of-domain`` failure.
    """
    if selection.series is None:
        return selection
    t0 = time.monotonic()
    result = check_domain(selection.series, manifest.domain)
    if timings is not None:
        timings["domain"] = time.monotonic() - t0
    if result.in_domain:
        return selection
    assert result.message is not None
    return Selection(None, Failure("out-of-domain", result.message), selection.verdicts,
                     f"{selection.explanation}; the chosen series is {result.message}")
