"""What a model declares about itself: ``model.json`` next to ``preprocess.json`` in its repository folder.

The model repository is the interface between the model team and the router: no router code names a model.
Everything the router needs to know to run a model safely and to report its result comes from this file:

- ``finding``: what the model detects, as codes (finding type, finding site, procedure), and the plain-language
  statements a viewer shows for a positive and a negative result;
- ``requirements``: the input requirements the model was trained for (a regulated product's "intended input"):
  modality, anatomy, contrast, slice thickness and count, matrix, pixel spacing, kernel, ImageType, orientation,
  spacing consistency. A use case may only narrow them (``AIUseCase.spec.match``);
- ``domain``: the input-domain check run on the loaded pixels before any result is trusted (for a head CT:
  plausible air/soft-tissue/bone fractions, an intracranial region present);
- ``operatingPoint``: the default decision threshold (Present/Absent) a use case may override;
- ``output``: the geometry of the result (``volume``: a slice of a 3D series with SCOORD + SCOORD3D;
  ``image``: one 2D image, SCOORD only).

Lookup follows :func:`pacsflow_router.analysis.preprocess.load_spec`: ``<repo>/<name>/<version>/model.json`` when
present (a version that changes what the model accepts), else ``<repo>/<name>/model.json``.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from ..config import ModelRef
from ..errors import ConfigError

__all__ = [
    "MANIFEST_FILE", "CodedConcept", "FindingSpec", "Range", "InputRequirements", "HuBand", "DomainCheck",
    "OperatingPoint", "OutputSpec", "ModelManifest", "read_manifest", "load_manifest", "algorithm_version",
    "ALGORITHM_VERSION_KEY",
]

log = logging.getLogger(__name__)

MANIFEST_FILE = "model.json"


class _Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True, use_attribute_docstrings=True,
    )


class CodedConcept(_Spec):
    """A coded concept (PS3.3 Code Sequence Macro): value, coding scheme designator, meaning."""

    value: str = Field(min_length=1, max_length=64)
    scheme: str = Field(min_length=1, max_length=16)
    """Coding Scheme Designator, e.g. ``SCT``, ``DCM``, ``RADLEX``."""
    meaning: str = Field(min_length=1, max_length=64)


class FindingSpec(_Spec):
    """What the model detects and how the result is worded."""

    type: CodedConcept
    """Finding type (TID 1501 "Finding"), e.g. SCT 1386000 "Intracranial hemorrhage"."""
    site: CodedConcept | None = None
    """Finding Site (TID 1501, SCT 363698007), e.g. SCT 1101003 "Intracranial structure"."""
    procedure: CodedConcept
    """Procedure Reported (TID 1500), e.g. SCT 303653007 "Computed tomography of head"."""
    present_statement: str = Field(min_length=1, max_length=1024)
    """Plain-language statement for a positive result, shown by viewers (TEXT content item)."""
    absent_statement: str = Field(min_length=1, max_length=1024)
    """Plain-language statement for a negative result."""


class Range(_Spec):
    """A closed interval; either bound may be left open."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies within the interval (bounds included)."""
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class InputRequirements(_Spec):
    """The input a model was trained for; a series that fails any of these is "not analysed: <reason>"."""

    modalities: list[str] = Field(default_factory=list)
    """Accepted Modality (0008,0060) values; empty = any."""
    body_parts: list[str] = Field(default_factory=list)
    """Accepted Body Part Examined (0018,0015) values (case-insensitive); empty = any."""
    body_part_patterns: list[str] = Field(default_factory=list)
    """Regular expressions searched in Series Description, then Study Description, when Body Part Examined is
    empty (senders often leave it out); never used to override a Body Part Examined that is present."""
    procedure_codes: list[str] = Field(default_factory=list)
    """Procedure codes of the order that also establish the anatomy (once orders exist)."""
    contrast: Literal["without", "with", "any"] = "any"
    """``without``: Contrast/Bolus Agent (0018,0010) must be absent or empty; ``with``: present."""
    slice_thickness_mm: Range | None = None
    """Slice Thickness (0018,0050), or the spacing between slices when it is absent."""
    slice_count: Range | None = None
    """Number of images (frames) in the series."""
    min_matrix: int | None = Field(default=None, ge=1)
    """Minimum of Rows and Columns."""
    pixel_spacing_mm: Range | None = None
    """Both values of Pixel Spacing (0028,0030)."""
    kernel_pattern: str | None = None
    """Regular expression searched in Convolution Kernel (0018,1210); a series without one passes."""
    image_type_required: list[str] = Field(default_factory=lambda: ["ORIGINAL", "PRIMARY"])
    """Values that must all appear in Image Type (0008,0008)."""
    image_type_excluded: list[str] = Field(default_factory=lambda: ["LOCALIZER", "DERIVED", "SECONDARY"])
    """Values none of which may appear in Image Type (localizers, reformats, secondary captures, dose screens)."""
    view_positions: list[str] = Field(default_factory=list)
    """Accepted View Position (0018,5101) values of a projection radiograph, e.g. ``[PA, AP]`` (case-insensitive);
    empty = any. An image stating another view (``LL``, a lateral) fails; one stating none passes."""
    max_axial_deviation_degrees: float | None = Field(default=None, ge=0, le=90)
    """Largest angle between the slice normal and the patient's z axis (volumes only)."""
    max_gantry_tilt_degrees: float | None = Field(default=None, ge=0, le=90)
    """Largest gantry tilt, from Gantry/Detector Tilt (0018,1120) or the slice stack's shear (volumes only)."""
    max_spacing_deviation: float | None = Field(default=None, ge=0)
    """Largest relative deviation of a slice gap from the median gap: no missing slices (volumes only)."""

    @field_validator("body_part_patterns")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            _check_regex(pattern)
        return value

    @field_validator("kernel_pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            _check_regex(value)
        return value


class HuBand(_Spec):
    """A band of input values and the fraction of the examined region it must occupy."""

    name: str = Field(min_length=1, max_length=32, pattern=r"^[a-z0-9_]+$")
    """Short name, used in the "out of domain" reason and as a metric label (bounded: declared here)."""
    values: Range
    """Value range, in the modality's units after the Modality LUT (HU for CT)."""
    fraction: Range
    """Allowed fraction of the examined region's pixels inside ``values``."""


class DomainCheck(_Spec):
    """The input-domain check: a series outside it is "not analysed: out of domain", never a positive."""

    bands: list[HuBand] = Field(default_factory=list)
    """Value bands whose fractions must be plausible (e.g. air, soft tissue, bone for a head CT)."""
    enclosed_band: str | None = None
    """Name of a band that must be found enclosed by ``enclosing_band`` on the central slices (e.g. brain
    tissue inside the skull: the intracranial region is present)."""
    enclosing_band: str | None = None
    enclosed_min_fraction: float = Field(default=0.0, ge=0, le=1)
    """Smallest fraction of a central slice's pixels that the enclosed region must cover."""

    @model_validator(mode="after")
    def _bands_named(self) -> DomainCheck:
        names = {b.name for b in self.bands}
        for ref in (self.enclosed_band, self.enclosing_band):
            if ref is not None and ref not in names:
                raise ValueError(f"band {ref!r} is not declared in 'bands' (declared: {sorted(names)})")
        if (self.enclosed_band is None) != (self.enclosing_band is None):
            raise ValueError("enclosedBand and enclosingBand are set together or not at all")
        return self


class OperatingPoint(_Spec):
    """The model's validated operating point."""

    decision_threshold: float = Field(default=0.5, ge=0, le=1)
    """Probability at or above which the finding is "Present" (a use case may set its own)."""


class OutputSpec(_Spec):
    """The geometry of the model's result."""

    geometry: Literal["volume", "image"] = "volume"
    """``volume``: per-slice outputs over a 3D series (SR with SCOORD and SCOORD3D); ``image``: one 2D image
    (SR with SCOORD only)."""
    slice_weights: list[float] | None = Field(default=None, min_length=1, max_length=9)
    """Study-level aggregation of a ``volume`` model's per-slice probabilities: the study's probability is the
    maximum over slices of this weighted mean of each slice's probability and its neighbours' (centred; an odd
    number of non-negative weights summing to 1; the series' end slices repeat), e.g. ``[0.25, 0.5, 0.25]``: a
    slice counts with half of its neighbours' evidence. Absent: the most likely slice's own probability."""

    @field_validator("slice_weights")
    @classmethod
    def _centred_mean(cls, weights: list[float] | None) -> list[float] | None:
        if weights is None:
            return None
        if len(weights) % 2 == 0:
            raise ValueError(f"an odd number of weights (centred on the slice), got {len(weights)}")
        if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
            raise ValueError(f"non-negative weights summing to 1, got {weights}")
        return weights


class ModelManifest(_Spec):
    """``model.json``: everything the router knows about a model beyond its weights and preprocessing."""

    description: str = ""
    intended_use: str = Field(default="", max_length=2048)
    finding: FindingSpec
    requirements: InputRequirements = Field(default_factory=InputRequirements)
    domain: DomainCheck = Field(default_factory=DomainCheck)
    operating_point: OperatingPoint = Field(default_factory=OperatingPoint)
    output: OutputSpec = Field(default_factory=OutputSpec)


def _check_regex(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression {pattern!r}: {exc}") from None


def read_manifest(path: str | Path) -> ModelManifest:
    """Read and validate one ``model.json``.

    Raises
    ------
    ConfigError
        The file is missing or invalid; the message names the file and every bad key.
    """
    path = Path(path)
    try:
        return ModelManifest.model_validate(json.loads(path.read_text()))
    except OSError as exc:
        raise ConfigError(f"cannot read model manifest {path}: {exc.strerror}; every model folder in the "
                          f"repository needs a {MANIFEST_FILE} (docs/model-repository.md)") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"model manifest {path} is not valid JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid model manifest {path}: {problems}") from None


def version_file(model_dir: Path, version: int | None, file: str) -> Path:
    """``<model_dir>/<version>/<file>`` when that file exists, else ``<model_dir>/<file>``: how every manifest file
    (``model.json``, ``preprocess.json``) is looked up, by the router and by the repository renderer."""
    versioned = model_dir / str(version) / file
    return versioned if version is not None and versioned.is_file() else model_dir / file


def load_manifest(model_repository: str | Path, model: ModelRef) -> ModelManifest:
    """The manifest of a pinned model: ``<repo>/<name>/<version>/model.json``, else ``<repo>/<name>/model.json``."""
    path = version_file(Path(model_repository) / model.name, model.version, MANIFEST_FILE)
    try:
        stat = path.stat()
    except OSError:
        return read_manifest(path)  # says what is missing
    return _cached_manifest(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _cached_manifest(path: str, mtime_ns: int, size: int) -> ModelManifest:
    # Read once per version of the file (the pipeline asks per study and use case; parsing and validating costs about
    # a millisecond); mtime and size in the key: a manifest edited in place is read again. ModelManifest is frozen.
    return read_manifest(path)


#: ONNX ``metadata_props`` key holding the model's own version string (written by the training script).
ALGORITHM_VERSION_KEY = "algorithm_version"
#: A version folder's file holding that string when the folder has no ``model.onnx`` (a router's mirror of what
#: Triton serves, analysis/manifestmirror.py); read before the ONNX file.
ALGORITHM_VERSION_FILE = "algorithm_version.txt"


@functools.lru_cache(maxsize=64)
def _onnx_algorithm_version(path: str, mtime_ns: int) -> str | None:
    # mtime in the key: a model file replaced in place (a re-export of the same version) is read again.
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # Only the metadata is wanted: skip graph optimisation, the bulk of session creation.
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1  # no thread pool for a session that never runs
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    value = session.get_modelmeta().custom_metadata_map.get(ALGORITHM_VERSION_KEY, "").strip()
    return value or None


def algorithm_version(model_repository: str | Path, model: ModelRef) -> str:
    """The model's own version string, for TID 4019 Algorithm Version (IHE AIR).

    Read from ``metadata_props["algorithm_version"]`` of ``<repo>/<name>/<version>/model.onnx`` with ONNX Runtime
    (a runtime dependency; the ``onnx`` package is not), cached per model file. A model without that key, or a
    repository without the ONNX file (a Triton-only deployment that serves another format), falls back to the
    pinned version number.
    """
    folder = Path(model_repository) / model.name / str(model.version)
    try:
        # A router on Triton keeps the string Triton's rendered ensemble carries (analysis/manifestmirror.py).
        stated = (folder / ALGORITHM_VERSION_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        stated = ""
    if stated:
        return stated
    try:
        found = onnx_algorithm_version(folder / "model.onnx")
    except OSError:
        return str(model.version)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own classes; a bad file must not stop a report
        log.warning("cannot read the algorithm version of %s v%s (%s); using the version number",
                    model.name, model.version, type(exc).__name__)
        return str(model.version)
    return found or str(model.version)


def onnx_algorithm_version(path: Path) -> str | None:
    """``metadata_props["algorithm_version"]`` of an ONNX file (None without it), cached per file and mtime.

    Raises
    ------
    OSError
        The file does not exist or cannot be read.
    """
    stat = path.stat()
    return _onnx_algorithm_version(str(path.resolve()), stat.st_mtime_ns)
