"""API ``pacsflow.io/v1alpha1``: the single source of the CRD schema (``crdgen`` turns it into YAML).

Field docstrings become the CRD's OpenAPI descriptions, so ``kubectl explain aiusecase.spec.mode`` says
what a field does. Use-case level types (model reference, match rule, triage, outputs, destinations) are
the router's own config model (:mod:`pacsflow_router.config`), so what a user writes in an ``AIUseCase``
is exactly what the router validates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator
from pydantic.alias_generators import to_camel

from pacsflow_router.config import (
    MODES,
    AETitle,
    Completion,
    Destination,
    ExternalAi,
    ExternalAnalysis,
    Hl7Destination,
    Hl7Listener,
    Match,
    Mode,
    ModelRef,
    Mpps,
    MwlSource,
    Name,
    Network,
    Orders,
    Outputs,
    Port,
    Triage,
    Webhook,
    Worklist,
)

# Kubernetes resource.Quantity, same pattern the API server uses for quantities in core types.
Quantity = Annotated[
    str, Field(pattern=r"^([+-]?[0-9.]+)([eEinumkKMGTPE]*[-+]?[0-9]*)$", examples=["10Gi"])
]

_MODE_RANK = "{" + ", ".join(f"'{m}': {i}" for i, m in enumerate(MODES)) + "}"

#: CEL transition rule on ``AIUseCase.spec.mode``: promote one phase at a time, demote any time.
MODE_TRANSITION_RULE = f"{_MODE_RANK}[self] <= {_MODE_RANK}[oldSelf] + 1"
MODE_TRANSITION_MESSAGE = (
    "A use case is promoted one phase at a time (silent → assistive → triage) so that each phase is "
    "reviewed before the next: set spec.mode to 'assistive' first and review its reports. Demotion to "
    "any lower phase is always allowed."
)
_MODE_TRANSITION_MESSAGE_EXPRESSION = (
    "'spec.mode cannot go from ' + oldSelf + ' to ' + self + ': a use case is promoted one phase at a "
    "time (silent → assistive → triage) so that each phase is reviewed before the next; set it to '"
    " + (oldSelf == 'silent' ? 'assistive' : 'triage') + ' first. Demotion to any lower phase is always "
    "allowed.'"
)
REPLICAS_MESSAGE = (
    "spec.replicas is at most 1: a study's instances may arrive over several associations, and until "
    "routers share study state two router pods behind one Service would each see part of a study and "
    "process incomplete studies. Use 0 to stop the router or 1 to run it."
)
ROUTER_IMMUTABLE_MESSAGE = (
    "spec.router cannot change: create a new AIUseCase bound to the other router and delete this one "
    "(its audit trail stays with the router that ran it)."
)


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, use_attribute_docstrings=True
    )


# --------------------------------------------------------------------------------------------- status
class Condition(_Model):
    """A KEP-1623 condition (the shape of ``metav1.Condition``)."""

    type: str = Field(min_length=1, max_length=316)
    """Condition type in CamelCase, e.g. ``Ready``."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str = Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    """Machine-readable CamelCase reason for the last transition."""
    message: str = Field(default="", max_length=32768)
    """What is wrong and what to do about it."""
    last_transition_time: datetime
    """When the condition last changed status."""
    observed_generation: int | None = Field(default=None, ge=0)
    """``metadata.generation`` the condition was computed from."""


Conditions = Annotated[
    list[Condition],
    Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}),
]


class _Status(_Model):
    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` the operator last reconciled."""
    conditions: Conditions = Field(default_factory=list)
    """Current state: ``Ready`` plus the conditions that say why not."""


# -------------------------------------------------------------------------------------- DicomRouter
class Spool(_Model):
    """The router's durable spool volume (received instances, study state, outbox, audit store)."""

    size: Quantity = "10Gi"
    """Requested size of the spool PersistentVolumeClaim."""
    storage_class_name: str | None = None
    """StorageClass of the spool PVC (cluster default when unset)."""
    max_disk_usage: float = Field(default=0.95, gt=0, le=1)
    """Above this fraction of the spool volume in use, C-STORE answers 0xA700 (out of resources) and the pod goes
    NotReady (the routing config's ``spoolMaxDiskUsage``)."""
    write_ahead: bool = False
    """Acknowledge each instance after one flush of a write-ahead segment instead of its own file and directory entry
    (the routing config's ``spoolWriteAhead``; off by default, trade-offs in docs/operations.md)."""


_RESERVED = ("/var/lib/pacsflow", "/etc/pacsflow", "/etc/pacsflow-tls")
_RESERVED_MESSAGE = "mountPath may not be under /var/lib/pacsflow, /etc/pacsflow or /etc/pacsflow-tls"
_RESERVED_PATHS_RULE = " && ".join(f"self != '{p}' && !self.startsWith('{p}/')" for p in _RESERVED)


#: The pattern kube-apiserver gives ``resource.Quantity`` in its own OpenAPI schema.
_K8S_QUANTITY_PATTERN = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)"
                         r"|(\.[0-9]+))))?$")


def _quantity_text(value: object) -> object:
    # ``cpu: 2`` in YAML arrives as an integer: Kubernetes quantities are int-or-string, the pod spec gets the text.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


#: A container resource quantity (``500m``, ``2``, ``1536Mi``), int-or-string as in the core API.
ResourceQuantity = Annotated[
    str,
    BeforeValidator(_quantity_text),
    Field(pattern=_K8S_QUANTITY_PATTERN),
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": _K8S_QUANTITY_PATTERN,
                    "x-kubernetes-int-or-string": True}),
]

#: The router container's resources when ``spec.resources`` is unset, measured on a real router (docs/pods.md):
#: about 160 MiB idle, 0.55 GiB after a 32-slice head CT, 1.25 GiB peak and 1 GiB resident after 300-slice ones,
#: about 4 CPU-seconds per 300-slice study. No CPU limit: CFS throttling would stall the DICOM association threads
#: and lengthen time to result; the memory limit leaves room for about 1500-slice studies.
ROUTER_DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "1", "memory": "1536Mi"},
    "limits": {"memory": "4Gi"},
}


class ResourceRequirements(_Model):
    """Compute resources of a container (the ``requests`` and ``limits`` of Kubernetes' ResourceRequirements)."""

    requests: dict[str, ResourceQuantity] = Field(default_factory=dict)
    """Resources the scheduler reserves (``cpu``, ``memory``, ``ephemeral-storage``)."""
    limits: dict[str, ResourceQuantity] = Field(default_factory=dict)
    """Most the container may use: above its ``memory`` limit it is OOM-killed, above ``cpu`` throttled."""


class SecretMount(_Model):
    """A Secret mounted read-only into the router pod (webhook HMAC keys, later TLS certificates)."""

    secret_name: Name
    """Name of the Secret (same namespace)."""
    mount_path: str = Field(pattern=r"^/.+$", max_length=253, json_schema_extra={"x-kubernetes-validations": [{
        "rule": _RESERVED_PATHS_RULE, "message": _RESERVED_MESSAGE}]})
    """Absolute directory it is mounted at, e.g. ``/etc/pacsflow-secrets/sectra``; a key ``k`` becomes the file
    ``<mountPath>/k``, which a webhook's ``secretFile`` names. Not under the spool, config or DICOM TLS directories."""

    @field_validator("mount_path")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if any(value == p or value.startswith(p + "/") for p in _RESERVED):
            raise ValueError(_RESERVED_MESSAGE)
        return value


class DicomTlsSecret(_Model):
    """DICOM TLS on the router's port (PS3.15 Annex B, BCP 195: TLS 1.2/1.3, 1.3 preferred) from one Secret.

    The Secret (type ``kubernetes.io/tls``, as cert-manager writes it) holds ``tls.crt`` and ``tls.key`` and, for
    client certificates, ``ca.crt``. It is mounted read-only at ``/etc/pacsflow-tls/dicom``; a rotated Secret is
    picked up by new connections without a restart (running associations keep theirs).
    """

    secret_name: Name
    """Name of the Secret (same namespace)."""
    client_certificate: Literal["none", "optional", "required"] = "none"
    """Mutual TLS: whether modalities must present a certificate signed by the Secret's ``ca.crt``."""
    min_version: Literal["1.2", "1.3"] = "1.2"
    """Oldest TLS version accepted."""
    ae_titles_by_certificate: dict[str, list[AETitle]] = Field(default_factory=dict)
    """Client certificate subject CN -> the calling AE titles it may use; when set, every association needs a
    certificate listed here, and a certificate issued for AE A cannot send as AE B."""


class SecretKey(_Model):
    """One key of a Secret (same namespace), mounted as a file."""

    secret_name: Name
    """Name of the Secret."""
    key: str = Field(default="token", pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)
    """The key whose value is the file's content."""


class RouterMetrics(_Model):
    """The router's metrics port: HTTPS, a scrape token and an allow-list, each from the spec.

    ``GET /healthz`` stays open without the token (the kubelet's liveness probe); the nodes' addresses belong in
    ``allowedNetworks`` for the probe to reach it.
    """

    tls_secret_name: Name | None = None
    """Secret (``kubernetes.io/tls``: ``tls.crt``, ``tls.key``) that puts ``/metrics`` on HTTPS; mounted read-only
    at ``/etc/pacsflow-tls/metrics`` and re-read on rotation. Plain HTTP when unset."""
    bearer_token_secret: SecretKey | None = None
    """Secret key holding the token scrapers must send as ``Authorization: Bearer``; mounted at
    ``/etc/pacsflow-tls/metrics-token`` and read on every scrape, so a rotation applies at once. Open when unset."""
    allowed_networks: list[Network] = Field(default_factory=list)
    """Scraper (and node) address blocks accepted on the metrics port; others are closed unread. Empty: any."""


class RouterAuditSyslog(_Model):
    """The router's tamper-evident audit chain forwarded to the hospital's ATNA audit record repository (a syslog
    collector) as DICOM audit messages (PS3.15 A.5), RFC 5424 over TLS (RFC 5425), from a durable cursor.

    The Secret (``tlsSecretName``) holds ``ca.crt``, the CA bundle that verifies the collector, and for mutual TLS
    ``tls.crt`` and ``tls.key`` (cert-manager's layout). It is mounted read-only as a whole directory at
    ``/etc/pacsflow-tls/audit-syslog``; each new connection to the collector reads it again, so a rotation applies
    from the next reconnect.
    """

    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:-]+$")
    """Collector host name or IP address (the router's NetworkPolicy allows egress to it on ``port``)."""
    port: Port = 6514
    """Collector port (6514: syslog over TLS)."""
    tls_secret_name: Name
    """Secret with ``ca.crt`` (and ``tls.crt``/``tls.key`` when ``clientCertificate``), same namespace."""
    client_certificate: bool = False
    """Present the Secret's ``tls.crt``/``tls.key`` to the collector (mutual TLS)."""
    server_name: str | None = Field(default=None, min_length=1, max_length=253)
    """Name the collector's certificate must carry (default: ``host``)."""
    min_version: Literal["1.2", "1.3"] = "1.2"
    """Oldest TLS version offered."""
    audit_source_id: str | None = Field(default=None, pattern=r"^[!-~]{1,64}$")
    """AuditSourceID of the messages (and the syslog HOSTNAME); the DicomRouter's name when unset."""
    retry_seconds: float = Field(default=5.0, gt=0)
    """Wait after a failed send before the next try (records wait in the results store meanwhile)."""


class DicomRouterSpec(_Model):
    """A DICOM router: a C-STORE SCP that runs AI use cases on complete studies and sends results on."""

    ae_title: AETitle = "PACSFLOW"
    """The router's own AE title (what modalities and the PACS call)."""
    port: Port = 11112
    """DICOM port of the router's Service and container."""
    replicas: int = Field(
        default=1,
        ge=0,
        le=1,
        json_schema_extra={"x-kubernetes-validations": [{"rule": "self <= 1", "message": REPLICAS_MESSAGE}]},
    )
    """Router pods: 0 (stopped) or 1. At most 1 until routers share study state, because a study's
    instances may arrive over several associations and two pods would split studies."""
    image: str | None = Field(default=None, min_length=1)
    """Router container image (the operator's default router image when unset)."""
    resources: ResourceRequirements | None = Field(default=None, description=(
        "Requests and limits of the router container, used as written (requests/limits not given are not set). "
        "Unset: requests cpu " + ROUTER_DEFAULT_RESOURCES["requests"]["cpu"] + ", memory "
        + ROUTER_DEFAULT_RESOURCES["requests"]["memory"] + "; limits memory " + ROUTER_DEFAULT_RESOURCES["limits"]["memory"]
        + ", no CPU limit (measured on a router running 300-slice head CTs: docs/pods.md)."))
    # Same spelling as the routing config (DICOM writes "AE Title", not "Ae Title").
    allowed_calling_ae_titles: list[AETitle] = Field(default_factory=list, alias="allowedCallingAETitles")
    """Calling AE titles accepted; associations from any other AE title are rejected."""
    allowed_networks: list[Network] = Field(default_factory=list)
    """Peer address blocks accepted on the DICOM port (``10.20.0.0/16``); others are refused before the
    association. Empty: any."""
    dicom_tls: DicomTlsSecret | None = None
    """DICOM over TLS on the router's port (plaintext when unset)."""
    completion: Completion = Field(default_factory=Completion)
    """When a study counts as complete."""
    destinations: Annotated[
        list[Destination],
        Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}),
    ] = Field(default_factory=list)
    """DICOM peers results are sent to; use cases name one in ``outputs.structuredReport.destination``."""
    triton_cluster: Name | None = None
    """Name of the TritonCluster (same namespace) that runs inference; in-process ONNX Runtime when unset."""
    spool: Spool = Field(default_factory=Spool)
    """Durable spool volume."""
    metrics_port: Port = 9108
    """Port of the router's Prometheus /metrics endpoint."""
    metrics: RouterMetrics | None = None
    """TLS, bearer token and allow-list of the metrics port (plain, open to any address when unset)."""
    audit_syslog: RouterAuditSyslog | None = None
    """Forward the audit chain to a syslog collector (ATNA) over TLS; the audit stays in the pod only when unset."""
    hl7_listener: Hl7Listener | None = None
    """HL7 v2 order listener (MLLP, and ``POST /hl7/orm`` when ``httpPort`` is set); off when unset. The router's
    Service exposes its ports."""
    mwl_source: MwlSource | None = None
    """The RIS Modality Worklist polled (C-FIND) as a second source of orders; off when unset."""
    orders: Orders = Field(default_factory=Orders)
    """Order store settings (expiry of orders that never get a study)."""
    mpps: Mpps = Field(default_factory=Mpps)
    """MPPS SCP on the router's DICOM port (a COMPLETED step completes the study without the stable window)."""
    worklist: Worklist = Field(default_factory=Worklist)
    """pacsflow's Modality Worklist SCP on the router's DICOM port, with the AI priority applied."""
    hl7_destinations: Annotated[
        list[Hl7Destination],
        Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}),
    ] = Field(default_factory=list)
    """HL7 v2 receivers (RIS, alerting) of order updates and alerts; use cases name one in ``outputs.hl7``."""
    webhooks: Annotated[
        list[Webhook],
        Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}),
    ] = Field(default_factory=list)
    """JSON webhook receivers of alerts; use cases list them in ``outputs.webhooks``."""
    secret_mounts: list[SecretMount] = Field(default_factory=list, max_length=16)
    """Secrets mounted read-only into the router pod (a webhook's ``secretFile`` points into one)."""
    external_ai: ExternalAi | None = None
    """De-identification edge for ``external`` destinations: ``keyFile`` points into a ``secretMounts`` Secret; the
    results port is added to the pod and Service."""


class DicomRouterStatus(_Status):
    """Observed state of a DicomRouter."""

    use_cases: int | None = Field(default=None, ge=0)
    """Number of AIUseCases rendered into the routing config."""
    config_map: str | None = None
    """ConfigMap holding the rendered routing config (hot-reloaded by the router)."""


# ------------------------------------------------------------------------------------ TritonCluster
class ModelRepository(_Model):
    """Where Triton's model repository lives."""

    persistent_volume_claim: Name
    """PersistentVolumeClaim (same namespace) holding the Triton-layout model repository."""


class TritonClusterSpec(_Model):
    """A Triton Inference Server deployment serving the models that AIUseCases pin."""

    image: str = Field(min_length=1)
    """Triton container image, e.g. ``nvcr.io/nvidia/tritonserver:25.01-py3``."""
    replicas: int = Field(default=1, ge=0)
    """Triton pods."""
    gpus_per_replica: int = Field(default=1, ge=0)
    """``nvidia.com/gpu`` per pod (0 runs on CPU)."""
    model_repository: ModelRepository
    """Model repository volume."""


class ServedModel(_Model):
    """A model the operator configured on this cluster."""

    name: str
    """Triton model name."""
    versions: list[int] = Field(default_factory=list)
    """Versions loaded (every version a bound use case pins)."""


class TritonClusterStatus(_Status):
    """Observed state of a TritonCluster."""

    models: list[ServedModel] = Field(default_factory=list)
    """Models and versions the rendered model configs load."""


# ---------------------------------------------------------------------------------------- AIUseCase
class PhaseCriteria(_Model):
    """The evidence a promotion into one phase needs (``status.evidence`` of the pinned model version)."""

    min_reviewed: int = Field(ge=0)
    """Reviewed cases (with a reader verdict or imported label) at least."""
    min_sensitivity: float = Field(ge=0, le=1)
    """Sensitivity (point estimate) at least."""
    min_specificity: float | None = Field(default=None, ge=0, le=1)
    """Specificity (point estimate) at least; no bar when unset."""
    min_ppv: float | None = Field(default=None, ge=0, le=1, alias="minPPV")
    """Positive predictive value (point estimate) at least; no bar when unset."""


ASSISTIVE_DEFAULT = PhaseCriteria(min_reviewed=50, min_sensitivity=0.90)
TRIAGE_DEFAULT = PhaseCriteria(min_reviewed=200, min_sensitivity=0.95, min_specificity=0.80)


def _criteria_default(criteria: PhaseCriteria) -> dict[str, Any]:
    return {"json_schema_extra": {"default": criteria.model_dump(by_alias=True, exclude_none=True)}}


class Promotion(_Model):
    """Evidence each phase needs. The API server refuses a promotion that ``status.evidence`` does not
    support (the ``pacsflow-promotion`` ValidatingAdmissionPolicy), unless the same edit sets the
    override annotation ``pacsflow.io/promotion-override: "approver=<name>; reason=<text>"``."""

    assistive: PhaseCriteria = Field(default=ASSISTIVE_DEFAULT, **_criteria_default(ASSISTIVE_DEFAULT))
    """Needed to enter assistive mode (default: 50 reviewed, sensitivity 0.90)."""
    triage: PhaseCriteria = Field(default=TRIAGE_DEFAULT, **_criteria_default(TRIAGE_DEFAULT))
    """Needed to enter triage mode (default: 200 reviewed, sensitivity 0.95, specificity 0.80)."""


class AIUseCaseSpec(_Model):
    """One clinical AI use case on one router, served by one pinned model version."""

    router: Name = Field(
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": ROUTER_IMMUTABLE_MESSAGE}]
        }
    )
    """Name of the DicomRouter (same namespace) whose studies this use case runs on. Immutable."""
    model: ModelRef
    """Triton model name and pinned version."""
    match: Match = Field(default_factory=Match)
    """Which studies the use case applies to (DICOM attributes; an empty list matches any)."""
    mode: Mode = Field(
        default="silent",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": MODE_TRANSITION_RULE,
                    "message": MODE_TRANSITION_MESSAGE,
                    "messageExpression": _MODE_TRANSITION_MESSAGE_EXPRESSION,
                    "reason": "FieldValueForbidden",
                }
            ]
        },
    )
    """Rollout phase. silent: results audited, never shown; assistive: SR sent to the PACS; triage: SR
    and a critical flag above the threshold. Promote one phase at a time; demote any time."""
    decision_threshold: float | None = Field(default=None, ge=0, le=1)
    """Probability at or above which the SR says "Present"; unset: the model's validated operating point
    (``operatingPoint.decisionThreshold`` in its model.json). triage.criticalThreshold may not be below it."""
    triage: Triage = Field(default_factory=Triage)
    """Triage settings (used in triage mode)."""
    outputs: Outputs = Field(default_factory=Outputs)
    """Where results go in assistive and triage mode."""
    external: ExternalAnalysis | None = None
    """Run the model at an external AI: the selected series go to an ``external`` destination de-identified (PS3.15
    Annex E, the options chosen here) and the returned SR is re-identified (docs/security.md)."""
    promotion: Promotion = Field(default_factory=Promotion, json_schema_extra={"default": {}})
    """Evidence each phase needs before the API server lets spec.mode be promoted into it. Only the
    clinical-lead group may change it (or spec.mode)."""


class Proportion(_Model):
    """One rate with its Wilson 95 % interval."""

    value: float = Field(ge=0, le=1)
    """Point estimate (numerator / denominator)."""
    lower: float = Field(ge=0, le=1)
    """Lower bound of the Wilson 95 % interval."""
    upper: float = Field(ge=0, le=1)
    """Upper bound of the Wilson 95 % interval."""
    numerator: int = Field(ge=0)
    """Cases counted as a success (e.g. true positives for sensitivity)."""
    denominator: int = Field(ge=1)
    """Cases the rate is of (e.g. all reviewed positives for sensitivity)."""


class Evidence(_Model):
    """What reviewed cases say about the pinned model version; written by the operator."""

    model_version: int = Field(ge=1)
    """Model version the counts are of; a promotion counts only the pinned spec.model.version."""
    computed_at: datetime
    """When the operator computed it."""
    reviewed: int = Field(ge=0)
    """Reviewed cases (reader verdicts and imported labels)."""
    sensitivity: Proportion | None = None
    """True positives / reviewed positives; absent until a positive case is reviewed."""
    specificity: Proportion | None = None
    """True negatives / reviewed negatives."""
    ppv: Proportion | None = None
    """Positive predictive value: true positives / AI positives."""
    npv: Proportion | None = None
    """Negative predictive value: true negatives / AI negatives."""


class Override(_Model):
    """A promotion the evidence did not support, let through by a named approver."""

    approver: str = Field(min_length=1)
    """Who approved it (from the override annotation)."""
    reason: str = Field(min_length=1)
    """Why (from the override annotation)."""


class ModeChange(_Model):
    """One entry of the rollout history."""

    mode: Mode
    """Mode the use case entered."""
    since: datetime
    """When the operator observed the change."""
    generation: int | None = Field(default=None, ge=0)
    """``metadata.generation`` that carried the change."""
    changed_by: str | None = None
    """Who made the change: the pacsflow.io/changed-by annotation, which the promotion policy requires to
    equal the requesting user's name on every change of spec.mode."""
    override: Override | None = None
    """Set when the change was a promotion let through by the override annotation."""
    evidence: Evidence | None = None
    """status.evidence when the operator observed the change."""


class AIUseCaseStatus(_Status):
    """Observed state of an AIUseCase."""

    mode_history: list[ModeChange] = Field(default_factory=list)
    """Every mode the use case has been in, oldest first."""
    evidence: Evidence | None = None
    """Evidence of the pinned model version from reviewed cases (the promotion policy reads it)."""


# --------------------------------------------------------------------------------------------- kinds
@dataclass(frozen=True)
class Kind:
    """A custom resource kind: its names, models and ``kubectl get`` columns."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    columns: tuple[dict[str, Any], ...] = field(default=())

    @property
    def singular(self) -> str:
        """Lower-case singular name."""
        return self.kind.lower()


def _ready_column() -> dict[str, Any]:
    return {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'}


def _reason_column() -> dict[str, Any]:
    return {
        "name": "Reason",
        "type": "string",
        "priority": 1,
        "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
    }


_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}

DICOM_ROUTER = Kind(
    kind="DicomRouter",
    plural="dicomrouters",
    short_names=("dr", "router"),
    spec=DicomRouterSpec,
    status=DicomRouterStatus,
    columns=(
        {"name": "AE Title", "type": "string", "jsonPath": ".spec.aeTitle"},
        {"name": "Port", "type": "integer", "jsonPath": ".spec.port"},
        {"name": "Triton", "type": "string", "jsonPath": ".spec.tritonCluster"},
        {"name": "Use Cases", "type": "integer", "jsonPath": ".status.useCases"},
        _ready_column(),
        _reason_column(),
        _AGE,
    ),
)
TRITON_CLUSTER = Kind(
    kind="TritonCluster",
    plural="tritonclusters",
    short_names=("tc", "triton"),
    spec=TritonClusterSpec,
    status=TritonClusterStatus,
    columns=(
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "GPUs", "type": "integer", "jsonPath": ".spec.gpusPerReplica"},
        {"name": "Image", "type": "string", "priority": 1, "jsonPath": ".spec.image"},
        _ready_column(),
        _reason_column(),
        _AGE,
    ),
)
AI_USE_CASE = Kind(
    kind="AIUseCase",
    plural="aiusecases",
    short_names=("aiuc", "usecase"),
    spec=AIUseCaseSpec,
    status=AIUseCaseStatus,
    columns=(
        {"name": "Router", "type": "string", "jsonPath": ".spec.router"},
        {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
        {"name": "Version", "type": "integer", "jsonPath": ".spec.model.version"},
        {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
        {"name": "Reviewed", "type": "integer", "priority": 1, "jsonPath": ".status.evidence.reviewed"},
        {"name": "Sensitivity", "type": "number", "priority": 1, "jsonPath": ".status.evidence.sensitivity.value"},
        _ready_column(),
        _reason_column(),
        _AGE,
    ),
)

KINDS: tuple[Kind, ...] = (DICOM_ROUTER, TRITON_CLUSTER, AI_USE_CASE)
