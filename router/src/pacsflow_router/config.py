"""The routing config: the contract between the operator (which renders it) and the router (which runs it).

The operator renders one of these per ``DicomRouter`` into a ConfigMap; the router loads it with
:func:`load_config`. Keys are camelCase on the wire (YAML) and snake_case in Python.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from .errors import ConfigError as ConfigError  # re-exported: the operator reads it from here (contract)

Mode = Literal["silent", "assistive", "triage"]
MODES: tuple[Mode, ...] = ("silent", "assistive", "triage")

AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[\x20-\x5b\x5d-\x7e]*[^ ][\x20-\x5b\x5d-\x7e]*$")]
Port = Annotated[int, Field(ge=1, le=65535)]
Name = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True,
        use_attribute_docstrings=True,
    )


class Destination(_Model):
    """A DICOM peer that results are sent to (C-STORE SCP)."""

    name: Name
    """Name that use cases refer to in ``outputs.structuredReport.destination``."""
    ae_title: AETitle
    """Called AE title of the destination."""
    host: str = Field(min_length=1)
    """Host name or address of the destination."""
    port: Port
    """TCP port of the destination's DICOM service."""


class Completion(_Model):
    """When a study counts as complete."""

    stable_seconds: float = Field(default=30.0, ge=0)
    """A study is complete after this many seconds without a new instance."""


class Inference(_Model):
    """Where models run."""

    backend: Literal["embedded", "triton"] = "embedded"
    """``embedded``: in-process ONNX Runtime reading ``modelRepository``; ``triton``: a Triton server at ``url``."""
    model_repository: str = "model_repository"
    """Triton-layout model repository (used by the embedded backend)."""
    url: str | None = None
    """Triton HTTP endpoint, ``host:port`` (required for the triton backend)."""
    protocol: Literal["http", "grpc"] = "http"
    """Triton client protocol."""
    shared_memory: bool = False
    """Pass tensors through system shared memory (only when Triton runs on the same host)."""
    timeout_seconds: float = Field(default=60.0, gt=0)
    """Per-request timeout."""

    @model_validator(mode="after")
    def _triton_needs_url(self) -> Inference:
        if self.backend == "triton" and not self.url:
            raise ValueError("backend 'triton' needs 'url' (host:port of Triton's HTTP or gRPC endpoint)")
        return self


class Audit(_Model):
    """Where the audit trail of every AI interaction is written."""

    url: str = "sqlite:///audit.db"
    """SQLAlchemy database URL (``sqlite:////abs/path.db`` or ``postgresql://...``)."""


class Metrics(_Model):
    """Prometheus endpoint."""

    port: Port = 9108
    """Port of the /metrics HTTP endpoint."""
    host: str = "127.0.0.1"
    """Address the metrics endpoint binds to."""


class ModelRef(_Model):
    """A model in the model repository, pinned to one version."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """Model name (folder in the model repository / Triton model name)."""
    version: int = Field(ge=1)
    """Pinned model version (numbered folder in the model repository)."""


class NumberRange(_Model):
    """A closed interval; either bound may be left open."""

    min: float | None = None
    """Lower bound (inclusive); open when absent."""
    max: float | None = None
    """Upper bound (inclusive); open when absent."""

    @model_validator(mode="after")
    def _ordered(self) -> NumberRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class Match(_Model):
    """Which studies a use case applies to, and how it narrows the model's input requirements.

    ``modalities`` and ``seriesDescriptionPattern`` decide whether a series is a candidate at all (a study with no
    candidate is "not applicable"). Every other field narrows the input requirements the model declares in its
    ``model.json`` (docs/input-requirements.md): the effective requirement is the intersection, so a use case can
    make the model stricter, never looser. Empty list / absent = no narrowing.
    """

    modalities: list[str] = Field(default_factory=list)
    """Modality (0008,0060) values, e.g. ``[CT]`` (intersected with the model's)."""
    body_parts_examined: list[str] = Field(default_factory=list)
    """Body Part Examined (0018,0015) values, e.g. ``[HEAD, BRAIN]`` (intersected with the model's)."""
    body_part_patterns: list[str] = Field(default_factory=list)
    """Regular expressions for Series/Study Description when Body Part Examined is empty; a description must
    match one of these and one of the model's."""
    series_description_pattern: str | None = None
    """Python regular expression searched in Series Description (0008,103E)."""
    contrast: Literal["without", "with", "any"] | None = None
    """Contrast/Bolus Agent (0018,0010): ``without`` (absent), ``with`` (present); conflicting with the model's
    requirement means no series passes."""
    slice_thickness_mm: NumberRange | None = None
    """Slice Thickness range (intersected with the model's)."""
    slice_count: NumberRange | None = None
    """Number of images range (intersected with the model's)."""
    min_matrix: int | None = Field(default=None, ge=1)
    """Minimum of Rows and Columns (the larger of this and the model's applies)."""
    pixel_spacing_mm: NumberRange | None = None
    """Pixel Spacing range (intersected with the model's)."""
    kernel_pattern: str | None = None
    """Regular expression for Convolution Kernel (0018,1210); must match as well as the model's."""
    image_type_required: list[str] = Field(default_factory=list)
    """Image Type values required in addition to the model's."""
    image_type_excluded: list[str] = Field(default_factory=list)
    """Image Type values refused in addition to the model's."""
    max_axial_deviation_degrees: float | None = Field(default=None, ge=0, le=90)
    """Largest angle of the slice normal from the patient's z axis (the smaller of this and the model's)."""
    max_gantry_tilt_degrees: float | None = Field(default=None, ge=0, le=90)
    """Largest gantry tilt (the smaller of this and the model's)."""
    max_spacing_deviation: float | None = Field(default=None, ge=0)
    """Largest relative deviation of a slice gap from the median gap (the smaller of this and the model's)."""

    @field_validator("series_description_pattern", "kernel_pattern")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            _check_regex(value)
        return value

    @field_validator("body_part_patterns")
    @classmethod
    def _valid_regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            _check_regex(pattern)
        return value


def _check_regex(pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None


class Triage(_Model):
    """Triage settings."""

    critical_threshold: float = Field(default=0.85, ge=0, le=1)
    """Studies whose finding probability reaches this are flagged critical (triage mode only)."""


class StructuredReportOutput(_Model):
    """Send a TID 1500 SR to a destination."""

    destination: Name
    """Name of a destination in ``destinations``."""


class Outputs(_Model):
    """Where a use case's results go (only in assistive and triage mode)."""

    structured_report: StructuredReportOutput | None = None
    """TID 1500 Structured Report output."""


class UseCase(_Model):
    """One clinical AI use case served by one pinned model."""

    name: Name
    """Use case name (a metric label and audit key)."""
    model: ModelRef
    """Model and pinned version."""
    match: Match = Field(default_factory=Match)
    """Which studies the use case applies to."""
    mode: Mode = "silent"
    """silent: audit only; assistive: SR to the PACS; triage: SR and critical flag above the threshold."""
    decision_threshold: float | None = Field(default=None, ge=0, le=1)
    """Probability at or above which the SR says "Present"; unset: the model manifest's
    ``operatingPoint.decisionThreshold``. A critical result is always "Present": triage flags a study critical only
    at or above both this and ``triage.criticalThreshold``."""
    triage: Triage = Field(default_factory=Triage)
    """Triage settings."""
    outputs: Outputs = Field(default_factory=Outputs)
    """Result outputs."""

    @model_validator(mode="after")
    def _critical_is_present(self) -> UseCase:
        # The SR must never say "Absent" for a study the worklist flags critical (the manifest's default is checked
        # by the pipeline, which flags critical only at or above both thresholds).
        if self.decision_threshold is not None and self.triage.critical_threshold < self.decision_threshold:
            raise ValueError(
                f"triage.criticalThreshold {self.triage.critical_threshold} is below decisionThreshold "
                f"{self.decision_threshold}: a critical study would be reported Absent; raise criticalThreshold "
                "or lower decisionThreshold")
        return self


class RoutingConfig(_Model):
    """Everything one router process needs."""

    ae_title: AETitle = "PACSFLOW"
    """The router's own AE title (called AE title of incoming associations)."""
    port: Port = 11112
    """DICOM listening port."""
    bind_address: str = "127.0.0.1"
    """Address the DICOM listener binds to (loopback by default; 0.0.0.0 in a pod)."""
    allowed_calling_ae_titles: list[AETitle] = Field(default_factory=list, alias="allowedCallingAETitles")
    """Calling AE titles accepted; associations from others are rejected (empty = reject all)."""
    spool_dir: str = "/var/lib/pacsflow/spool"
    """Durable spool directory (instances, study state, outbox)."""
    spool_max_disk_usage: float = Field(default=0.95, gt=0, le=1)
    """Above this fraction of the spool's disk in use, C-STORE answers 0xA700 (out of resources)."""
    completion: Completion = Field(default_factory=Completion)
    """Study completion rule."""
    destinations: list[Destination] = Field(default_factory=list)
    """Result destinations."""
    inference: Inference = Field(default_factory=Inference)
    """Inference backend."""
    audit: Audit = Field(default_factory=Audit)
    """Audit store."""
    metrics: Metrics = Field(default_factory=Metrics)
    """Prometheus metrics endpoint."""
    use_cases: list[UseCase] = Field(default_factory=list)
    """AI use cases run on every complete study they match."""

    @model_validator(mode="after")
    def _references_resolve(self) -> RoutingConfig:
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError(f"destinations: names must be unique, got {names}")
        uc_names = [u.name for u in self.use_cases]
        if len(set(uc_names)) != len(uc_names):
            raise ValueError(f"useCases: names must be unique, got {uc_names}")
        for i, uc in enumerate(self.use_cases):
            sr = uc.outputs.structured_report
            if sr is not None and sr.destination not in names:
                raise ValueError(
                    f"useCases[{i}].outputs.structuredReport.destination: unknown destination "
                    f"{sr.destination!r}; define it in 'destinations' (known: {names})"
                )
        return self

    def destination(self, name: str) -> Destination:
        """The destination called ``name``."""
        return next(d for d in self.destinations if d.name == name)


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def parse_config(data: object, source: str = "<config>") -> RoutingConfig:
    """Validate a routing config already parsed from YAML/JSON.

    Raises
    ------
    ConfigError
        One message naming every bad key, e.g. ``useCases[0].mode: ...``.
    """
    try:
        return RoutingConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if p not in ("function-after",))
            problems.append(f"{_key_path(loc)}: {err['msg']}")
        raise ConfigError(f"invalid routing config {source}: " + "; ".join(problems)) from None


def load_config(path: str | Path) -> RoutingConfig:
    """Read and validate the routing config YAML at ``path``."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read routing config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"routing config {path} is not valid YAML: {exc}") from None
    return parse_config(data, str(path))


def render_config(config: RoutingConfig) -> str:
    """The YAML the operator writes into the router's ConfigMap (camelCase keys)."""
    # libyaml's emitter when present: the operator renders one config per router on every use-case edit.
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(config.model_dump(by_alias=True, mode="json", exclude_none=True), Dumper=dumper,
                     sort_keys=False)
