"""The routing config: the contract between the operator (which renders it) and the router (which runs it).

The operator renders one of these per ``DicomRouter`` into a ConfigMap; the router loads it with
:func:`load_config`. Keys are camelCase on the wire (YAML) and snake_case in Python.
"""

from __future__ import annotations

import functools
import json
import re
from ipaddress import ip_network
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
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


def _network(value: str) -> str:
    try:
        return str(ip_network(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an address block like 10.0.0.0/8 or ::1/128 (host bits must be zero)") \
            from None


Network = Annotated[str, AfterValidator(_network)]
"""An address block of an allow-list (``10.0.0.0/8``, ``127.0.0.1/32``, ``::1/128``), kept in its canonical form."""


class TlsServer(_Model):
    """TLS on a listener: DICOM (PS3.15 Annex B secure transport, BCP 195), MLLP or HTTP.

    TLS 1.2 and 1.3 only (1.3 preferred), forward-secret AEAD ciphers only. The files are re-read when they change
    (a rotated Kubernetes Secret): new connections get the new certificate, running ones keep theirs.
    """

    cert_file: str = Field(min_length=1)
    """PEM certificate chain (a mounted Secret's ``tls.crt``)."""
    key_file: str = Field(min_length=1)
    """PEM private key (``tls.key``)."""
    client_ca_file: str | None = None
    """PEM bundle of the CAs whose client certificates are accepted (mutual TLS)."""
    client_certificate: Literal["none", "optional", "required"] = "none"
    """Whether clients must present a certificate signed by ``clientCaFile``."""
    min_version: Literal["1.2", "1.3"] = "1.2"
    """Oldest TLS version accepted."""

    @model_validator(mode="after")
    def _ca_for_client_certificates(self) -> TlsServer:
        if self.client_certificate != "none" and not self.client_ca_file:
            raise ValueError("clientCaFile is required when clientCertificate is optional or required")
        return self


class TlsClient(_Model):
    """TLS when pacsflow connects out (a PACS, an HL7 receiver, a webhook, a syslog collector).

    The server's certificate is always verified; there is no switch to turn that off.
    """

    ca_file: str | None = None
    """PEM CA bundle that verifies the server (unset: the system's trust store)."""
    cert_file: str | None = None
    """PEM client certificate chain, for peers that require mutual TLS."""
    key_file: str | None = None
    """PEM key of ``certFile``."""
    server_name: str | None = None
    """Name the server's certificate must carry (default: the host connected to)."""
    min_version: Literal["1.2", "1.3"] = "1.2"
    """Oldest TLS version offered."""

    @model_validator(mode="after")
    def _key_with_certificate(self) -> TlsClient:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("certFile and keyFile go together")
        return self


class DicomTls(TlsServer):
    """TLS on the DICOM listener, with certificates bound to AE titles."""

    ae_titles_by_certificate: dict[str, list[AETitle]] = Field(default_factory=dict)
    """Client certificate subject CN -> the calling AE titles it may use. When set, an association whose calling AE
    title is not listed for its certificate is rejected, so a certificate issued for AE A cannot send as AE B."""


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
    tls: TlsClient | None = None
    """Connect over TLS (PS3.15 Annex B); plaintext when unset."""
    external: bool = False
    """Outside the hospital (a cloud AI vendor, another site): only de-identified instances go there (PS3.15 Annex E,
    the sending use case's ``external.deidentification``); an SR output may not name it."""


class Completion(_Model):
    """When a study counts as complete.

    An MPPS COMPLETED (or DISCONTINUED) from the modality completes a study at once (``mpps``); the stable window
    is the fallback for modalities that send no MPPS and for MPPS-listed instances that never arrive.
    """

    stable_seconds: float = Field(default=30.0, ge=0)
    """A study is complete after this many seconds without a new instance."""
    stable_seconds_by_modality: dict[str, float] = Field(default_factory=dict)
    """Per-modality override of ``stableSeconds``, e.g. ``{MR: 120}`` (the modality of the study's first
    instance)."""

    @field_validator("stable_seconds_by_modality")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [k for k, v in value.items() if v < 0]
        if bad:
            raise ValueError(f"windows must be >= 0 seconds (negative for {bad})")
        return value

    def window(self, modality: str | None) -> float:
        """The completion window for a study of ``modality``."""
        return self.stable_seconds_by_modality.get(modality or "", self.stable_seconds)


class Inference(_Model):
    """Where models run."""

    backend: Literal["embedded", "triton"] = "embedded"
    """``embedded``: in-process ONNX Runtime reading ``modelRepository``; ``triton``: a Triton server at ``url``."""
    model_repository: str = "model_repository"
    """Triton-layout model repository: the embedded backend runs it; on Triton, the manifests' fallback."""
    manifest_mirror: str | None = None
    """Triton only: a writable folder where the router keeps each pinned version's manifest (``model.json``,
    ``preprocess.json``, algorithm version) as Triton's rendered ensemble carries it, so a version dropped into
    Triton's repository alone is preprocessed and reported correctly (analysis/manifestmirror.py). Unset: the
    manifests of ``modelRepository``."""
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


class AuditSyslog(_Model):
    """A syslog collector (an ATNA audit record repository) that receives every audit chain record as a DICOM audit
    message (PS3.15 A.5) over TLS (RFC 5425 framing); records are sent from a durable cursor and retried, never lost
    while the collector is down."""

    host: str
    """Collector host name or address."""
    port: Port = 6514
    """Collector port (6514: syslog over TLS)."""
    tls: TlsClient = Field(default_factory=lambda: TlsClient())
    """TLS to the collector (always on; certificate verified)."""
    audit_source_id: str = Field(default="pacsflow", pattern=r"^[!-~]{1,64}$")
    """AuditSourceID of the messages (and the syslog HOSTNAME)."""
    retry_seconds: float = Field(default=5.0, gt=0)
    """Wait after a failed send before the next try."""


class Audit(_Model):
    """Where the audit trail of every AI interaction is written."""

    url: str = "sqlite:///audit.db"
    """SQLAlchemy database URL (``sqlite:////abs/path.db`` or ``postgresql://...``)."""
    syslog: AuditSyslog | None = None
    """Forward the audit chain to a syslog collector as DICOM audit messages."""


class Metrics(_Model):
    """Prometheus endpoint."""

    port: Port = 9108
    """Port of the /metrics HTTP endpoint."""
    host: str = "127.0.0.1"
    """Address the metrics endpoint binds to."""
    tls: TlsServer | None = None
    """Serve /metrics over HTTPS."""
    bearer_token_file: str | None = None
    """File holding the token scrapers must send as ``Authorization: Bearer`` (a mounted Secret); open when unset."""
    allowed_networks: list[Network] = Field(default_factory=list)
    """Client addresses accepted (empty: any)."""


class ModelRef(_Model):
    """A model in the model repository, pinned to one version."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """Model name (folder in the model repository / Triton model name)."""
    version: int = Field(ge=1)
    """Pinned model version (numbered folder in the model repository)."""


def served_model_name(model: str, version: int) -> str:
    """The Triton model that serves ``model`` pinned to ``version`` (``ich_detector_v2``): the repository renderer
    names each pinned version's ensemble so, and the operator asks Triton for it."""
    return f"{model}_v{int(version)}"


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
    # -- order criteria (the study's order from HL7 or the worklist; workflow/orders.py) -------------------------
    patient_classes: list[str] = Field(default_factory=list)
    """Order's patient class (PV1-2), e.g. ``[E]`` for the emergency department. Any order criterion set: a
    study without a matching order is not applicable."""
    order_priorities: list[str] = Field(default_factory=list)
    """Order's priority (HL7 codes: ``S`` stat, ``A`` ASAP, ``R`` routine, ...)."""
    procedure_codes: list[str] = Field(default_factory=list)
    """Order's requested procedure code values (OBR-4.1 / Scheduled Procedure Step code)."""
    ordering_location_pattern: str | None = None
    """Python regular expression searched in the order's patient location (PV1-3), e.g. ``^ED``."""

    def has_order_criteria(self) -> bool:
        """Whether the use case narrows studies by their order."""
        return bool(self.patient_classes or self.order_priorities or self.procedure_codes
                    or self.ordering_location_pattern)

    @field_validator("series_description_pattern", "kernel_pattern", "ordering_location_pattern")
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
    require_approval: bool = False
    """Hold a critical result's worklist flag, HL7 messages and webhooks until a reader or clinical lead approves it
    in pacsflow-api (``POST /api/v1/results/{trackingUID}/approve``); a rejected one is never sent. The SR still goes
    to the PACS at once: only the priority is held."""


class StructuredReportOutput(_Model):
    """Send a TID 1500 SR to a destination."""

    destination: Name
    """Name of a destination in ``destinations``."""


Hl7MessageKind = Literal["order-update", "alert", "draft-report"]


class Hl7Output(_Model):
    """HL7 v2 messages sent for a critical result (triage mode only, at or above ``criticalThreshold``)."""

    destination: Name
    """Name of an entry in the router's ``hl7Destinations``."""
    messages: list[Hl7MessageKind] = Field(default=["order-update", "alert"], min_length=1)
    """``order-update``: ORM^O01 / OMI^O23 with ORC-1 XO, priority S (STAT) and the procedure description prefixed
    ``[AI: Critical Finding Suspected]``; ``alert``: ORU^R01 with the finding, probability, model and SR UID, result
    status P (preliminary); ``draft-report``: ORU^R01 with the draft report text (result status P), sent once a reader
    accepted the result in pacsflow-api (assistive and triage mode, critical or not)."""


class Outputs(_Model):
    """Where a use case's results go (SR in assistive and triage mode; HL7 and webhooks in triage mode only)."""

    structured_report: StructuredReportOutput | None = None
    """TID 1500 Structured Report output."""
    hl7: Hl7Output | None = None
    """HL7 v2 order update and/or alert for critical results (triage only)."""
    webhooks: list[Name] = Field(default_factory=list)
    """Names of entries in the router's ``webhooks`` that receive a JSON alert for critical results (triage
    only)."""


class SafePrivateTag(_Model):
    """A private attribute known to carry no identity (Retain Safe Private Option, PS3.15 E.3.10)."""

    creator: str = Field(min_length=1, max_length=64)
    """Private Creator of the block, e.g. ``SIEMENS CT VA0  COAD``."""
    group: int = Field(ge=0x0009, le=0xFFFF)
    """Odd group number, e.g. ``0x0019`` (25)."""
    element: int = Field(ge=0x00, le=0xFF)
    """Element offset within the block (the low byte), e.g. ``0x10``."""

    @field_validator("group")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"group 0x{value:04X} is not a private (odd) group")
        return value


class Deidentification(_Model):
    """PS3.15 Annex E Basic Application Level Confidentiality Profile and the options the use case selects.

    The Retain UIDs Option is never offered (UIDs are always remapped, consistently, with a keyed HMAC); Clean Pixel
    Data is not done: images that may carry burned-in text are refused instead (``allowBurnedInAnnotation``).
    """

    retain_longitudinal_temporal_information: Literal["off", "modified-dates", "full-dates"] = "off"
    """``modified-dates``: dates shifted by a keyed per-patient offset (E.3.6); ``full-dates``: kept; ``off``: the
    Basic Profile's action (removed or a dummy)."""
    retain_patient_characteristics: bool = False
    """Keep sex, age, size, weight, ... (E.3.4)."""
    retain_device_identity: bool = False
    """Keep station name, device serial numbers, ... (E.3.2)."""
    retain_institution_identity: bool = False
    """Keep institution name, address, department (E.3.8)."""
    clean_descriptors: bool = False
    """Keep descriptions and comments (Study/Series Description, ...) with the instance's own identifiers removed
    from the text, instead of removing them (E.3.5)."""
    safe_private: list[SafePrivateTag] = Field(default_factory=list)
    """Retain Safe Private Option (E.3.10): these private attributes are kept; every other private one is removed."""
    allow_burned_in_annotation: bool = False
    """Send images with Burned In Annotation YES, or absent for modalities that burn text in (US, XA, SC, ...).
    Refused when false (the default): pacsflow does not clean pixel data."""


class ExternalAnalysis(_Model):
    """The use case's model runs outside the hospital: the matching series go there de-identified, and the SR that
    comes back on the ``externalAi`` results port is re-identified and sent to ``outputs.structuredReport``."""

    destination: Name
    """A destination marked ``external: true``."""
    deidentification: Deidentification = Field(default_factory=Deidentification)
    """Annex E options for what is sent."""


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
    external: ExternalAnalysis | None = None
    """Run the model at an external AI (de-identified out, re-identified back) instead of in the router; the
    model's manifest still selects the series."""

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


Hl7Version = Literal["2.3", "2.3.1", "2.5.1"]


class Hl7FieldMap(_Model):
    """Where each order field is read from in an incoming ORM^O01 / OMI^O23 (IHE Scheduled Workflow by default).

    Each entry lists locations tried in order, first non-empty wins: ``SEG-field`` or ``SEG-field.component``
    (1-based, as HL7 numbers them; MSH-1 is the field separator), e.g. ``OBR-18`` or ``ORC-7.6``.
    """

    accession: list[str] = Field(default_factory=lambda: ["OBR-18", "IPC-1"])
    """Accession Number."""
    requested_procedure_id: list[str] = Field(default_factory=lambda: ["OBR-19", "IPC-2"])
    """Requested Procedure ID."""
    study_instance_uid: list[str] = Field(default_factory=lambda: ["ZDS-1", "IPC-3"])
    """Study Instance UID."""
    modality: list[str] = Field(default_factory=lambda: ["OBR-24", "IPC-5"])
    """Modality."""
    procedure_code: list[str] = Field(default_factory=lambda: ["OBR-4"])
    """Requested procedure code (component 1 code, 2 text, 3 coding scheme)."""
    priority: list[str] = Field(default_factory=lambda: ["ORC-7.6", "TQ1-9", "OBR-27.6"])
    """Order priority (S, A, R, P, C, T)."""
    patient_class: list[str] = Field(default_factory=lambda: ["PV1-2"])
    """Patient class (E emergency, I inpatient, O outpatient, ...)."""
    location: list[str] = Field(default_factory=lambda: ["PV1-3"])
    """Assigned patient location."""
    reason: list[str] = Field(default_factory=lambda: ["OBR-31"])
    """Reason for study."""
    patient_id: list[str] = Field(default_factory=lambda: ["PID-3.1"])
    """Patient ID (first identifier's ID number)."""
    placer_order_number: list[str] = Field(default_factory=lambda: ["ORC-2", "OBR-2"])
    """Placer order number."""
    filler_order_number: list[str] = Field(default_factory=lambda: ["ORC-3", "OBR-3"])
    """Filler order number."""

    @field_validator("*")
    @classmethod
    def _locations(cls, value: list[str]) -> list[str]:
        for loc in value:
            if not re.fullmatch(r"[A-Z][A-Z0-9]{2}-[1-9][0-9]*(\.[1-9][0-9]*)?", loc):
                raise ValueError(f"{loc!r} is not a field location like OBR-18 or ORC-7.6")
        return value


class Hl7Listener(_Model):
    """The HL7 v2 order listener: MLLP, and the same parser over HTTP (``POST /hl7/orm``)."""

    port: Port = 2575
    """MLLP port."""
    bind_address: str = "127.0.0.1"
    """Address the MLLP and HTTP listeners bind to (loopback by default; 0.0.0.0 in a pod)."""
    http_port: Port | None = None
    """Port of ``POST /hl7/orm`` (off when unset)."""
    max_message_bytes: int = Field(default=1_048_576, ge=1024)
    """A message longer than this is refused (AE) without being buffered."""
    idle_timeout_seconds: float = Field(default=300.0, gt=0)
    """An MLLP connection silent this long is closed."""
    message_timeout_seconds: float = Field(default=30.0, gt=0)
    """A message must arrive completely this long after its first byte (slow senders are dropped)."""
    application: str = "PACSFLOW"
    """MSH-3 sending application of the ACKs (the receiving application the RIS addresses)."""
    facility: str = "PACSFLOW"
    """MSH-4 of the ACKs."""
    field_map: Hl7FieldMap = Field(default_factory=Hl7FieldMap)
    """Where order fields are read from."""
    tls: TlsServer | None = None
    """MLLP and HTTP over TLS; plaintext when unset."""
    allowed_networks: list[Network] = Field(default_factory=list)
    """Client addresses accepted on both ports (empty: any)."""


class Hl7Destination(_Model):
    """An HL7 v2 receiver (RIS, alerting system, EHR) reached over MLLP."""

    name: Name
    """Name that use cases refer to in ``outputs.hl7.destination``."""
    host: str = Field(min_length=1)
    """Host name or address."""
    port: Port
    """MLLP port."""
    version: Hl7Version = "2.5.1"
    """HL7 version of the messages sent: ``2.3``/``2.3.1`` send ORM^O01, ``2.5.1`` OMI^O23 (order update)."""
    receiving_application: str = ""
    """MSH-5."""
    receiving_facility: str = ""
    """MSH-6."""
    timeout_seconds: float = Field(default=10.0, gt=0)
    """Seconds to wait for the ACK."""
    tls: TlsClient | None = None
    """MLLP over TLS; plaintext when unset."""


class Webhook(_Model):
    """A URL that receives a signed JSON alert (a vendor worklist API, e.g. Sectra Workflow Orchestrator, behind an
    adapter)."""

    name: Name
    """Name that use cases list in ``outputs.webhooks``."""
    url: str = Field(pattern=r"^https?://")
    """Target URL (POST)."""
    secret_file: str | None = None
    """File holding the HMAC-SHA256 key (a mounted Secret); the body's signature goes in ``X-Pacsflow-Signature``.
    Unsigned when unset."""
    timeout_seconds: float = Field(default=10.0, gt=0)
    """Request timeout."""
    ca_file: str | None = None
    """PEM CA bundle that verifies an ``https://`` URL's certificate (unset: the system's trust store). Verification
    is always on."""


class MwlSource(_Model):
    """A RIS Modality Worklist SCP polled (C-FIND) as a second source of orders."""

    ae_title: AETitle
    """Called AE title of the RIS worklist SCP."""
    host: str = Field(min_length=1)
    """Host of the worklist SCP."""
    port: Port
    """Port of the worklist SCP."""
    station_ae_title: AETitle | None = None
    """Scheduled Station AE Title to query (any when unset)."""
    modality: str | None = None
    """Modality to query (any when unset)."""
    days_before: int = Field(default=0, ge=0)
    """Date window: scheduled from this many days before today..."""
    days_after: int = Field(default=0, ge=0)
    """...to this many days after today."""
    poll_seconds: float = Field(default=60.0, gt=0)
    """Seconds between polls."""
    tls: TlsClient | None = None
    """C-FIND over TLS; plaintext when unset."""


class Orders(_Model):
    """The durable order store."""

    expire_after_hours: float = Field(default=72.0, gt=0)
    """An order that never gets a study is expired after this long (counted in a metric)."""


class Worklist(_Model):
    """pacsflow's own Modality Worklist SCP (C-FIND on the router's DICOM port) with the AI priority applied."""

    enabled: bool = True
    """Serve the Modality Worklist Information Model - FIND on the router's AE title and port."""


class Mpps(_Model):
    """Modality Performed Procedure Step SCP (N-CREATE / N-SET on the router's DICOM port)."""

    enabled: bool = True
    """Accept MPPS from modalities: COMPLETED completes the study once every listed instance arrived."""


class ExternalAi(_Model):
    """The de-identification edge: the pseudonym key and the port where external AIs return their results."""

    key_file: str = Field(min_length=1)
    """File with at least 32 random bytes (a mounted Secret): keys the pseudonymous UIDs, date shifts and patient
    pseudonyms (HMAC) and encrypts the pseudonym map at rest (AES-GCM). Changing it breaks re-identification of
    studies already sent."""
    results_ae_title: AETitle = "PACSFLOW_RESULTS"
    """Called AE title of the results port."""
    results_port: Port = 11113
    """DICOM port where external AIs send their SRs (C-STORE)."""
    allowed_calling_ae_titles: list[AETitle] = Field(default_factory=list, alias="allowedCallingAETitles")
    """Calling AE titles of the external AIs (empty = reject all)."""


class ConfigMapRef(_Model):
    """The ConfigMap this config is rendered into, which the router also watches through the Kubernetes API."""

    namespace: Name
    """Namespace of the ConfigMap (the router's own)."""
    name: str = Field(min_length=1, max_length=253)
    """Name of the ConfigMap."""


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
    allowed_networks: list[Network] = Field(default_factory=list)
    """Peer addresses accepted on the DICOM port (empty: any); others are refused before the association."""
    tls: DicomTls | None = None
    """DICOM over TLS on the listening port; plaintext when unset."""
    spool_dir: str = "/var/lib/pacsflow/spool"
    """Durable spool directory (instances, study state, outbox)."""
    spool_max_disk_usage: float = Field(default=0.95, gt=0, le=1)
    """Above this fraction of the spool's disk in use, C-STORE answers 0xA700 (out of resources)."""
    spool_write_ahead: bool = False
    """Acknowledge after one flush of a write-ahead segment (ingest/wal.py) instead of the instance's own file and
    directory entry. Off by default: +6-7 % on one association, within the spread of runs, for every instance
    written twice, 32-128 MiB of segments, and readers seeing instances up to 1 s later (docs/operations.md)."""
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
    hl7_listener: Hl7Listener | None = None
    """HL7 v2 order listener (MLLP and ``POST /hl7/orm``); off when unset."""
    mwl_source: MwlSource | None = None
    """RIS Modality Worklist polled for orders; off when unset."""
    orders: Orders = Field(default_factory=Orders)
    """Order store settings."""
    mpps: Mpps = Field(default_factory=Mpps)
    """MPPS SCP."""
    worklist: Worklist = Field(default_factory=Worklist)
    """pacsflow's Modality Worklist SCP."""
    hl7_destinations: list[Hl7Destination] = Field(default_factory=list)
    """HL7 v2 receivers of order updates and alerts."""
    webhooks: list[Webhook] = Field(default_factory=list)
    """JSON webhook receivers of alerts."""
    external_ai: ExternalAi | None = None
    """De-identification edge for ``external`` destinations and the results port; required by a use case with
    ``external``."""
    config_map: ConfigMapRef | None = None
    """Watch this ConfigMap through the Kubernetes API so a mode change applies in seconds (the mounted file,
    which the kubelet updates up to a minute later, stays the fallback); off when unset or outside a cluster."""

    @model_validator(mode="after")
    def _references_resolve(self) -> RoutingConfig:
        names = _unique("destinations", [d.name for d in self.destinations])
        _unique("useCases", [u.name for u in self.use_cases])
        hl7_names = _unique("hl7Destinations", [d.name for d in self.hl7_destinations])
        hook_names = _unique("webhooks", [w.name for w in self.webhooks])
        external = {d.name for d in self.destinations if d.external}
        for i, uc in enumerate(self.use_cases):
            sr = uc.outputs.structured_report
            if sr is not None and sr.destination not in names:
                raise ValueError(
                    f"useCases[{i}].outputs.structuredReport.destination: unknown destination "
                    f"{sr.destination!r}; define it in 'destinations' (known: {names})"
                )
            _check_external(i, uc, external, self.external_ai is not None)
            hl7 = uc.outputs.hl7
            if hl7 is not None and hl7.destination not in hl7_names:
                raise ValueError(
                    f"useCases[{i}].outputs.hl7.destination: unknown HL7 destination {hl7.destination!r}; define it "
                    f"in 'hl7Destinations' (known: {hl7_names})"
                )
            for hook in uc.outputs.webhooks:
                if hook not in hook_names:
                    raise ValueError(
                        f"useCases[{i}].outputs.webhooks: unknown webhook {hook!r}; define it in 'webhooks' "
                        f"(known: {hook_names})"
                    )
        return self

    def destination(self, name: str) -> Destination:
        """The destination called ``name``."""
        return next(d for d in self.destinations if d.name == name)

    def hl7_destination(self, name: str) -> Hl7Destination:
        """The HL7 destination called ``name``."""
        return next(d for d in self.hl7_destinations if d.name == name)

    def webhook(self, name: str) -> Webhook:
        """The webhook called ``name``."""
        return next(w for w in self.webhooks if w.name == name)


def _check_external(i: int, uc: UseCase, external: set[str], edge: bool) -> None:
    sr = uc.outputs.structured_report
    if sr is not None and sr.destination in external:
        raise ValueError(f"useCases[{i}].outputs.structuredReport.destination: {sr.destination!r} is external and an "
                         "SR carries patient data; send SRs to a hospital destination")
    if uc.external is None:
        return
    if uc.external.destination not in external:
        raise ValueError(f"useCases[{i}].external.destination: {uc.external.destination!r} is not a destination "
                         f"marked 'external: true' (external: {sorted(external)})")
    if not edge:
        raise ValueError(f"useCases[{i}].external: set 'externalAi' (keyFile, resultsPort) to send studies out")


def _unique(key: str, names: list[str]) -> list[str]:
    if len(set(names)) != len(names):
        raise ValueError(f"{key}: names must be unique, got {names}")
    return names


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


# libyaml's emitter when present: the operator renders one config per router on every use-case edit.
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def render_config(config: RoutingConfig) -> str:
    """The YAML the operator writes into the router's ConfigMap (camelCase keys).

    The same text as one ``yaml.dump`` of the whole document (block style, keys in model order): a top-level
    block mapping is its keys' blocks one after another, and a top-level block sequence its items' blocks. Each
    use case's block is kept (:func:`_use_case_yaml`), because PyYAML's representer is pure Python: a router with
    40 use cases cost ~27 ms of CPU per render, and a burst of creations renders it again and again.
    """
    doc = config.model_dump(by_alias=True, mode="json", exclude_none=True)
    parts = []
    for key, value in doc.items():
        if key == "useCases" and value:
            parts.append("useCases:\n")
            parts.extend(_use_case_yaml(json.dumps(use_case)) for use_case in value)
        else:
            parts.append(yaml.dump({key: value}, Dumper=_DUMPER, sort_keys=False))
    return "".join(parts)


@functools.lru_cache(maxsize=4096)
def _use_case_yaml(use_case_json: str) -> str:
    """One use case as a top-level sequence item (``- name: ...``), from its JSON (which keeps key order)."""
    return yaml.dump([json.loads(use_case_json)], Dumper=_DUMPER, sort_keys=False)
