"""DicomRouter + its bound AIUseCases -> routing config, Deployment, Service, spool PVC, ConfigMap.

The routing config is built with the router's own model (:mod:`pacsflow_router.config`) and validated
with its own parser, so what the operator writes is exactly what the router will load. The router
hot-reloads the ConfigMap's file, so the pod template carries no config hash: a mode change must not
restart the pod (that would drop associations in flight).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Only the config module of the router (import-linter contract); ConfigError is re-exported by it.
from pacsflow_router.config import (
    Audit,
    AuditSyslog,
    ConfigError,
    ConfigMapRef,
    DicomTls,
    Inference,
    Metrics,
    RoutingConfig,
    TlsClient,
    TlsServer,
    UseCase,
    parse_config,
    render_config,
)

from ..resources.v1alpha1 import ROUTER_DEFAULT_RESOURCES, AIUseCaseSpec, DicomRouterSpec
from .conditions import Cond, ready
from .manifests import cluster_ip_service, deployment
from .netpol import router_network_policy

CONFIG_KEY = "routing.yaml"
CONFIG_DIR = "/etc/pacsflow"
DATA_DIR = "/var/lib/pacsflow"
#: Where ``spec.dicomTls.secretName`` is mounted (tls.crt, tls.key, ca.crt).
DICOM_TLS_DIR = "/etc/pacsflow-tls/dicom"
#: Where ``spec.metrics.tlsSecretName`` (tls.crt, tls.key) and ``spec.metrics.bearerTokenSecret`` are mounted.
METRICS_TLS_DIR = "/etc/pacsflow-tls/metrics"
METRICS_TOKEN_DIR = "/etc/pacsflow-tls/metrics-token"
#: Where ``spec.auditSyslog.tlsSecretName`` (ca.crt; tls.crt, tls.key for mutual TLS) is mounted.
AUDIT_SYSLOG_TLS_DIR = "/etc/pacsflow-tls/audit-syslog"
#: Answered 200 without the scrape token (pacsflow_router.metricsendpoint.HEALTH_PATH): the liveness probe's path.
HEALTH_PATH = "/healthz"
#: 200 when the DICOM listener accepts and the spool takes a durable write, else 503 with the reason, without the
#: scrape token (pacsflow_router.metricsendpoint.READY_PATH): the startup and readiness probes' path.
READY_PATH = "/readyz"
EMBEDDED_MODEL_REPOSITORY = "/opt/pacsflow/model_repository"
TRITON_HTTP_PORT = 8000
# A non-root uid/gid that owns the spool volume (fsGroup) so the router never needs root.
RUN_AS = 10001


def deployment_name(router: str) -> str:
    """Name of the router's Deployment and Service."""
    return f"{router}-router"


def config_map_name(router: str) -> str:
    """Name of the ConfigMap holding the router's rendered routing config."""
    return f"{router}-router-config"


def service_account_name(router: str) -> str:
    """Name of the router's ServiceAccount, Role and RoleBinding (it may read its own ConfigMap, nothing else)."""
    return f"{router}-router"


def pvc_name(router: str) -> str:
    """Name of the router's spool PersistentVolumeClaim."""
    return f"{router}-router-spool"


def triton_url(cluster: str, namespace: str) -> str:
    """``host:port`` of a TritonCluster's HTTP endpoint as seen from a router pod."""
    from .triton import service_name  # local: triton.py imports nothing from here, keep it one-way

    return f"{service_name(cluster)}.{namespace}.svc:{TRITON_HTTP_PORT}"


def labels(router: str, component: str = "router") -> dict[str, str]:
    """Recommended labels (app.kubernetes.io/*) of every child of a router."""
    return {
        "app.kubernetes.io/name": "pacsflow-router",
        "app.kubernetes.io/instance": router,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "pacsflow",
        "app.kubernetes.io/managed-by": "pacsflow-operator",
    }


def _selector(router: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "pacsflow-router", "app.kubernetes.io/instance": router}


@dataclass(frozen=True)
class RouterPlan:
    """What one reconcile of a DicomRouter wants to exist and report."""

    config: RoutingConfig
    config_text: str
    children: list[dict[str, Any]]
    accepted: tuple[str, ...]
    rejected: Mapping[str, str] = field(default_factory=dict)
    conditions: list[Cond] = field(default_factory=list)


def base_config(name: str, namespace: str, spec: DicomRouterSpec) -> RoutingConfig:
    """The routing config of a router with no use cases (what the pod needs from the router spec)."""
    if spec.triton_cluster:
        # The router reads each model's manifest (model.json, preprocess.json, algorithm version) for its own
        # preprocessing and reports as Triton's rendered ensemble carries it, mirrored on the spool volume; the copy
        # in its image is the fallback for a repository rendered without them.
        inference = Inference(backend="triton", url=triton_url(spec.triton_cluster, namespace),
                              model_repository=EMBEDDED_MODEL_REPOSITORY, manifest_mirror=f"{DATA_DIR}/manifests")
    else:
        inference = Inference(backend="embedded", model_repository=EMBEDDED_MODEL_REPOSITORY)
    return RoutingConfig(
        ae_title=spec.ae_title,
        port=spec.port,
        bind_address="0.0.0.0",
        allowed_calling_ae_titles=list(spec.allowed_calling_ae_titles),
        allowed_networks=list(spec.allowed_networks),
        tls=_dicom_tls(spec),
        spool_dir=f"{DATA_DIR}/spool",
        spool_max_disk_usage=spec.spool.max_disk_usage,
        spool_write_ahead=spec.spool.write_ahead,
        completion=spec.completion,
        destinations=list(spec.destinations),
        inference=inference,
        audit=Audit(url=f"sqlite:///{DATA_DIR}/audit.db", syslog=_audit_syslog(name, spec)),
        metrics=_metrics(spec),
        hl7_listener=spec.hl7_listener.model_copy(update={"bind_address": "0.0.0.0"}) if spec.hl7_listener else None,
        mwl_source=spec.mwl_source,
        orders=spec.orders,
        mpps=spec.mpps,
        worklist=spec.worklist,
        hl7_destinations=list(spec.hl7_destinations),
        webhooks=list(spec.webhooks),
        config_map=ConfigMapRef(namespace=namespace, name=config_map_name(name)),
        external_ai=spec.external_ai,
    )


def _dicom_tls(spec: DicomRouterSpec) -> DicomTls | None:
    """The routing config's ``tls``: the files of the mounted ``spec.dicomTls`` Secret."""
    t = spec.dicom_tls
    if t is None:
        return None
    return DicomTls(
        cert_file=f"{DICOM_TLS_DIR}/tls.crt", key_file=f"{DICOM_TLS_DIR}/tls.key",
        client_ca_file=f"{DICOM_TLS_DIR}/ca.crt" if t.client_certificate != "none" else None,
        client_certificate=t.client_certificate, min_version=t.min_version,
        ae_titles_by_certificate={cn: list(aets) for cn, aets in t.ae_titles_by_certificate.items()},
    )


def _metrics(spec: DicomRouterSpec) -> Metrics:
    """The routing config's ``metrics``: port, and the files of the mounted ``spec.metrics`` Secrets."""
    m = spec.metrics
    if m is None:
        return Metrics(port=spec.metrics_port, host="0.0.0.0")
    token = m.bearer_token_secret
    return Metrics(
        port=spec.metrics_port, host="0.0.0.0", allowed_networks=list(m.allowed_networks),
        tls=TlsServer(cert_file=f"{METRICS_TLS_DIR}/tls.crt", key_file=f"{METRICS_TLS_DIR}/tls.key")
        if m.tls_secret_name else None,
        bearer_token_file=f"{METRICS_TOKEN_DIR}/{token.key}" if token else None,
    )


def _audit_syslog(name: str, spec: DicomRouterSpec) -> AuditSyslog | None:
    """The routing config's ``audit.syslog``: the collector, the files of the mounted ``spec.auditSyslog`` Secret, and
    the DicomRouter's name as the AuditSourceID unless the spec names one."""
    a = spec.audit_syslog
    if a is None:
        return None
    return AuditSyslog(
        host=a.host, port=a.port, audit_source_id=a.audit_source_id or name[:64], retry_seconds=a.retry_seconds,
        tls=TlsClient(ca_file=f"{AUDIT_SYSLOG_TLS_DIR}/ca.crt", server_name=a.server_name, min_version=a.min_version,
                      cert_file=f"{AUDIT_SYSLOG_TLS_DIR}/tls.crt" if a.client_certificate else None,
                      key_file=f"{AUDIT_SYSLOG_TLS_DIR}/tls.key" if a.client_certificate else None),
    )


def _tls_secrets(spec: DicomRouterSpec) -> list[tuple[str, str, dict[str, Any]]]:
    """(volume name, mount path, secret volume source) of the metrics port's and the audit collector's Secrets;
    whole-directory mounts, no subPath, so rotated Secrets reach the pod."""
    m = spec.metrics
    out: list[tuple[str, str, dict[str, Any]]] = []
    if m is not None and m.tls_secret_name:
        out.append(("metrics-tls", METRICS_TLS_DIR, {"secretName": m.tls_secret_name, "defaultMode": 0o440}))
    if m is not None and m.bearer_token_secret is not None:
        ref = m.bearer_token_secret
        out.append(("metrics-token", METRICS_TOKEN_DIR, {"secretName": ref.secret_name, "defaultMode": 0o440,
                                                         "items": [{"key": ref.key, "path": ref.key}]}))
    if spec.audit_syslog is not None:
        out.append(("audit-syslog-tls", AUDIT_SYSLOG_TLS_DIR,
                    {"secretName": spec.audit_syslog.tls_secret_name, "defaultMode": 0o440}))
    return out


def use_case(name: str, spec: AIUseCaseSpec) -> UseCase:
    """The routing-config entry of one AIUseCase (its metadata.name is the use case name)."""
    return UseCase(
        name=name, model=spec.model, match=spec.match, mode=spec.mode, decision_threshold=spec.decision_threshold,
        triage=spec.triage, outputs=spec.outputs, external=spec.external,
    )


def _as_wire(config: RoutingConfig) -> dict[str, Any]:
    return config.model_dump(by_alias=True, mode="json", exclude_none=True)


def routing_config(
    name: str, namespace: str, spec: DicomRouterSpec, use_cases: Mapping[str, AIUseCaseSpec]
) -> tuple[RoutingConfig, dict[str, str]]:
    """The router's routing config and the use cases that could not be rendered, with why.

    One bad AIUseCase (say, an SR destination the router does not define) must not take every other
    use case on the router down with it, so each is validated on its own with the router's parser and
    left out when it fails.

    Parameters
    ----------
    name, namespace
        The DicomRouter's name and namespace.
    spec
        The DicomRouter's spec.
    use_cases
        AIUseCase name -> spec, every use case bound to this router.

    Returns
    -------
    tuple
        The validated :class:`RoutingConfig` and ``{use case name: message}`` of those left out.
    """
    base = _as_wire(base_config(name, namespace, spec))
    entries: dict[str, dict[str, Any]] = {}
    rejected: dict[str, str] = {}
    for uc_name in sorted(use_cases):
        try:
            entries[uc_name] = use_case(uc_name, use_cases[uc_name]).model_dump(
                by_alias=True, mode="json", exclude_none=True)
        except ValueError as exc:  # pydantic ValidationError, e.g. a metadata.name that is not a DNS label
            rejected[uc_name] = f"cannot be a routing config use case: {exc}"
    # Fast path: one parse of the whole document (the router's parser is the judge of the contract).
    try:
        return parse_config({**base, "useCases": list(entries.values())}, source=f"of DicomRouter {name}"), rejected
    except ConfigError:
        pass
    # Something is wrong: find the culprits one use case at a time and leave only them out.
    accepted = []
    for uc_name, entry in entries.items():
        try:
            parse_config({**base, "useCases": [entry]}, source=f"for AIUseCase {uc_name}")
        except ConfigError as exc:
            rejected[uc_name] = str(exc)
            continue
        accepted.append(entry)
    return parse_config({**base, "useCases": accepted}, source=f"of DicomRouter {name}"), rejected


def render_router(
    name: str,
    namespace: str,
    spec: DicomRouterSpec,
    use_cases: Mapping[str, AIUseCaseSpec],
    *,
    image: str,
    triton_cluster_exists: bool | None = None,
) -> RouterPlan:
    """Every child of a DicomRouter and its conditions.

    Parameters
    ----------
    name, namespace
        The DicomRouter's name and namespace.
    spec
        The DicomRouter's spec.
    use_cases
        AIUseCase name -> spec, every use case bound to this router.
    image
        Router image when the spec names none (the operator's default).
    triton_cluster_exists
        Whether ``spec.tritonCluster`` exists (``None`` when the router names none).

    Returns
    -------
    RouterPlan
        ConfigMap, RBAC, PVC, Service, NetworkPolicy, Deployment (in the order they should be applied) and
        conditions.
    """
    config, rejected = routing_config(name, namespace, spec, use_cases)
    text = render_config(config)
    children = [
        _config_map(name, text),
        *_config_reader_rbac(name),
        _pvc(name, spec),
        _service(name, spec),
        router_network_policy(deployment_name(name), spec, _selector(name), labels(name, "network-policy")),
        _deployment(name, spec, spec.image or image),
    ]
    conds = []
    if spec.triton_cluster is not None:
        if triton_cluster_exists:
            conds.append(Cond("TritonClusterFound", "True", "Found", f"inference runs on {spec.triton_cluster}"))
        else:
            conds.append(Cond(
                "TritonClusterFound", "False", "TritonClusterNotFound",
                f"TritonCluster {spec.triton_cluster!r} does not exist in namespace {namespace!r}: create it or "
                "fix spec.tritonCluster; studies wait in the spool until inference is reachable.",
            ))
    n = len(config.use_cases)
    if rejected:
        conds.append(Cond(
            "ConfigRendered", "True", "SomeUseCasesInvalid",
            f"{n} of {n + len(rejected)} use cases rendered; left out (see their status): "
            + ", ".join(sorted(rejected)),
        ))
    else:
        conds.append(Cond("ConfigRendered", "True", "Rendered", f"{n} use case(s) rendered"))
    conds.insert(0, ready(conds, f"router children applied with {n} use case(s)"))
    return RouterPlan(config, text, children, tuple(u.name for u in config.use_cases), rejected, conds)


def _config_map(name: str, text: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": config_map_name(name), "labels": labels(name, "routing-config")},
        "data": {CONFIG_KEY: text},
    }


def _config_reader_rbac(name: str) -> list[dict[str, Any]]:
    """ServiceAccount + Role + RoleBinding: the router may get and watch its own ConfigMap and nothing else.

    The router watches it through the API (the kill switch applies in seconds; the kubelet refreshes the mounted
    file up to a minute later). ``resourceNames`` limits a watch to requests with
    ``fieldSelector=metadata.name=<name>``, which is how the router asks (a get first, then a watch: no list).
    """
    sa = service_account_name(name)
    rbac = "rbac.authorization.k8s.io/v1"

    def meta() -> dict[str, Any]:  # one dict per child: adopting a child adds to its own metadata
        return {"name": sa, "labels": labels(name, "config-reader")}

    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta()},
        {"apiVersion": rbac, "kind": "Role", "metadata": meta(), "rules": [{
            "apiGroups": [""], "resources": ["configmaps"], "resourceNames": [config_map_name(name)],
            "verbs": ["get", "watch"],
        }]},
        {"apiVersion": rbac, "kind": "RoleBinding", "metadata": meta(),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
         "subjects": [{"kind": "ServiceAccount", "name": sa}]},
    ]


#: Children carrying this annotation are applied but never given an ownerReference, so deleting their owner does not
#: garbage-collect them. The spool holds acknowledged instances and queued results: "nothing acknowledged may ever
#: be lost" includes a platform team deleting a DicomRouter. Re-creating the router reuses the claim and resumes.
RETAIN_ANNOTATION = "pacsflow.io/retain"


def _pvc(name: str, spec: DicomRouterSpec) -> dict[str, Any]:
    pvc_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.spool.size}},
    }
    if spec.spool.storage_class_name:
        pvc_spec["storageClassName"] = spec.spool.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": pvc_name(name), "labels": labels(name, "spool"),
            "annotations": {RETAIN_ANNOTATION: "acknowledged DICOM instances: delete this claim yourself"},
        },
        "spec": pvc_spec,
    }


def _ports(spec: DicomRouterSpec) -> list[tuple[str, int]]:
    """Named ports of the router's container and Service: DICOM, metrics, and the HL7 listener's when set."""
    ports = [("dicom", spec.port), ("metrics", spec.metrics_port)]
    if spec.hl7_listener is not None:
        ports.append(("mllp", spec.hl7_listener.port))
        if spec.hl7_listener.http_port is not None:
            ports.append(("hl7-http", spec.hl7_listener.http_port))
    if spec.external_ai is not None:
        ports.append(("dicom-results", spec.external_ai.results_port))
    return ports


def _service(name: str, spec: DicomRouterSpec) -> dict[str, Any]:
    return cluster_ip_service(deployment_name(name), labels(name), _selector(name), _ports(spec))


def _resources(spec: DicomRouterSpec) -> dict[str, dict[str, str]]:
    """The router container's requests and limits: ``spec.resources`` as written, else the measured defaults."""
    if spec.resources is None:
        return {part: dict(values) for part, values in ROUTER_DEFAULT_RESOURCES.items()}
    return {part: dict(values) for part, values in spec.resources.model_dump().items() if values}


def _http_probe(spec: DicomRouterSpec, path: str) -> dict[str, Any]:
    scheme = "HTTPS" if spec.metrics is not None and spec.metrics.tls_secret_name else "HTTP"
    return {"httpGet": {"path": path, "port": "metrics", "scheme": scheme}}


def _deployment(name: str, spec: DicomRouterSpec, image: str) -> dict[str, Any]:
    container = {
        "name": "router",
        "image": image,
        "args": ["--config", f"{CONFIG_DIR}/{CONFIG_KEY}"],
        "env": [{"name": "PACSFLOW_ROUTER_LOG_FORMAT", "value": "json"}],
        "ports": [{"name": port_name, "containerPort": port, "protocol": "TCP"} for port_name, port in _ports(spec)],
        # Ready = /readyz on the metrics port: the DICOM listener accepts connections and the spool takes a
        # durable write (a full or read-only spool volume takes the pod out of the Service, where a TCP probe
        # would keep it in); no scrape token needed, HTTPS when the metrics port has TLS. Alive = /healthz.
        # Startup: the DICOM listener opens only once the process has imported its stack and read the spool's
        # index (StudyTracker), minutes on a slow node or a large spool; liveness waits up to 5 min for it.
        "startupProbe": {**_http_probe(spec, READY_PATH), "periodSeconds": 2, "failureThreshold": 150},
        "readinessProbe": {**_http_probe(spec, READY_PATH), "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**_http_probe(spec, HEALTH_PATH), "initialDelaySeconds": 10, "periodSeconds": 10,
                          "failureThreshold": 6},
        "resources": _resources(spec),
        "volumeMounts": [
            {"name": "spool", "mountPath": DATA_DIR},
            # No subPath: kubelet only refreshes whole-directory ConfigMap mounts, and hot reload needs that.
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            *({"name": f"secret-{i}", "mountPath": m.mount_path, "readOnly": True}
              for i, m in enumerate(spec.secret_mounts)),
            *([{"name": "dicom-tls", "mountPath": DICOM_TLS_DIR, "readOnly": True}] if spec.dicom_tls else []),
            *({"name": vol, "mountPath": path, "readOnly": True} for vol, path, _ in _tls_secrets(spec)),
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    pod_spec = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # Reads its own ConfigMap through the API (see _config_reader_rbac).
        "serviceAccountName": service_account_name(name),
        # Long enough to finish an association and fsync what was acknowledged.
        "terminationGracePeriodSeconds": 60,
        "containers": [container],
        "volumes": [
            {"name": "spool", "persistentVolumeClaim": {"claimName": pvc_name(name)}},
            {"name": "config", "configMap": {"name": config_map_name(name)}},
            *({"name": f"secret-{i}", "secret": {"secretName": m.secret_name, "defaultMode": 0o440}}
              for i, m in enumerate(spec.secret_mounts)),
            # No subPath: the kubelet refreshes a rotated Secret only in whole-directory mounts.
            *([{"name": "dicom-tls", "secret": {"secretName": spec.dicom_tls.secret_name, "defaultMode": 0o440}}]
              if spec.dicom_tls else []),
            *({"name": vol, "secret": source} for vol, _, source in _tls_secrets(spec)),
        ],
    }
    # Recreate: a rolling update would run two pods at once (split studies, RWO spool on two nodes).
    return deployment(deployment_name(name), labels(name), _selector(name), spec.replicas, pod_spec,
                      strategy="Recreate")
