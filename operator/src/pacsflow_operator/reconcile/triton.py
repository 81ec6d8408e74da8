"""TritonCluster + the AIUseCases it serves -> Deployment and Service that load every pinned version.

The model repository PVC holds the *source* repository the model team maintains; Triton serves a
repository rendered from it by the router's :mod:`pacsflow_router.models.repository` (ONNX step with dynamic
batching, priority levels and a bounded queue, postprocess step, one ensemble per pinned version). The
operator does not read the PVC: it renders the list of pinned versions into the arguments of an init
container that runs ``pacsflow model-repository render`` from the router image into an ``emptyDir``, so
the code that renders the configs is the same code the router's tests check, and the PVC stays
read-only. A change of pinned versions changes the pod template, so Triton restarts with the new
repository while routers keep studies queued (inference unavailable is a retry, never a loss).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..resources.v1alpha1 import AIUseCaseSpec, TritonClusterSpec
from .conditions import Cond, ready
from .manifests import cluster_ip_service, deployment

HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
OPERATOR_POD_LABELS = {"app.kubernetes.io/name": "pacsflow-operator", "app.kubernetes.io/component": "operator"}
"""Labels the chart gives the operator's pod (charts/pacsflow/templates/_helpers.tpl): the Triton policy admits
those pods' model readiness requests (AIUseCase ``ModelAvailable``)."""
REPO_MOUNT, MODELS_MOUNT = "/repository", "/models"
MODELS_DIR = f"{MODELS_MOUNT}/repository"
"""The rendered repository Triton serves: a folder in the ``models`` emptyDir, not its mount point, because the
renderer stages each model beside the repository (in its parent) and renames it into place, and the parent of the
mount point is the read-only root filesystem."""


def deployment_name(cluster: str) -> str:
    """Name of the TritonCluster's Deployment."""
    return f"{cluster}-triton"


def service_name(cluster: str) -> str:
    """Name of the TritonCluster's Service (routers reach ``<name>.<namespace>.svc:8000``)."""
    return f"{cluster}-triton"


def labels(cluster: str) -> dict[str, str]:
    """Recommended labels of every child of a TritonCluster."""
    return {
        "app.kubernetes.io/name": "pacsflow-triton",
        "app.kubernetes.io/instance": cluster,
        "app.kubernetes.io/component": "inference",
        "app.kubernetes.io/part-of": "pacsflow",
        "app.kubernetes.io/managed-by": "pacsflow-operator",
    }


def _selector(cluster: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "pacsflow-triton", "app.kubernetes.io/instance": cluster}


def pinned_versions(use_cases: Iterable[AIUseCaseSpec]) -> dict[str, list[int]]:
    """Per source model name, every version a use case pins (sorted)."""
    versions: dict[str, set[int]] = {}
    for uc in use_cases:
        versions.setdefault(uc.model.name, set()).add(uc.model.version)
    return {name: sorted(v) for name, v in sorted(versions.items())}


def render_args(spec: TritonClusterSpec, versions: Mapping[str, list[int]]) -> list[str]:
    """Arguments of ``pacsflow model-repository render`` for this cluster and these pinned versions.

    Parameters
    ----------
    spec
        The TritonCluster's spec (``gpusPerReplica`` picks the render target).
    versions
        Source model name -> pinned versions.

    Returns
    -------
    list of str
        Without pinned versions every version present is rendered (a cluster nobody uses yet still
        starts and can be probed).
    """
    target = "gpu" if spec.gpus_per_replica else "cpu-python"
    args = ["model-repository", "render", "--target", target, "--source", REPO_MOUNT, "--out", MODELS_DIR]
    if versions:
        args += ["--versions", *(f"{m}:{','.join(str(v) for v in vs)}" for m, vs in versions.items())]
    return args


@dataclass(frozen=True)
class TritonPlan:
    """What one reconcile of a TritonCluster wants to exist and report."""

    children: list[dict[str, Any]]
    models: list[dict[str, Any]]
    conditions: list[Cond] = field(default_factory=list)


def render_triton(
    name: str, spec: TritonClusterSpec, use_cases: Mapping[str, AIUseCaseSpec], *, render_image: str,
    operator_namespace: str = "",
) -> TritonPlan:
    """Every child of a TritonCluster and its conditions.

    Parameters
    ----------
    name
        The TritonCluster's name.
    spec
        Its spec.
    use_cases
        AIUseCase name -> spec, every use case whose router names this cluster.
    render_image
        Image with the ``pacsflow`` command (the router image) for the repository-render init container.
    operator_namespace
        The operator pod's namespace (``PACSFLOW_OPERATOR_NAMESPACE``, from the downward API in the chart), whose
        operator pods the NetworkPolicy admits on Triton's HTTP port; empty: operator pods in any namespace.

    Returns
    -------
    TritonPlan
        Service, NetworkPolicy and Deployment, the served models and conditions.
    """
    versions = pinned_versions(use_cases.values())
    children = [_service(name), network_policy(name, operator_namespace=operator_namespace),
                _deployment(name, spec, render_args(spec, versions), render_image)]
    models = [{"name": model, "versions": vs} for model, vs in versions.items()]
    conds = [Cond("ModelsPinned", "True", "Rendered",
                  f"{len(models)} model(s) pinned by use cases: "
                  + (", ".join(f"{m['name']} {m['versions']}" for m in models) or "none"))]
    conds.insert(0, ready(conds, f"Triton children applied serving {len(models)} pinned model(s)"))
    return TritonPlan(children, models, conds)


def network_policy(name: str, *, operator_namespace: str = "") -> dict[str, Any]:
    """The TritonCluster's NetworkPolicy: who may reach its Triton pods.

    Triton answers the namespace's routers (HTTP, gRPC), the operator's pods (HTTP: the model readiness request
    behind AIUseCase ``ModelAvailable``) and scrapers (metrics); it connects to nothing but DNS.

    Parameters
    ----------
    name
        The TritonCluster's name.
    operator_namespace
        Namespace of the operator's pods; empty admits the operator's pods (by label) in any namespace.

    Returns
    -------
    dict
        A ``networking.k8s.io/v1`` NetworkPolicy.
    """
    routers = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "pacsflow-router"}}}
    namespaces = ({"matchLabels": {"kubernetes.io/metadata.name": operator_namespace}} if operator_namespace
                  else {})
    operator = {"namespaceSelector": namespaces, "podSelector": {"matchLabels": dict(OPERATOR_POD_LABELS)}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": deployment_name(name), "labels": labels(name)},
        "spec": {
            "podSelector": {"matchLabels": _selector(name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [routers], "ports": [{"port": HTTP_PORT, "protocol": "TCP"},
                                                      {"port": GRPC_PORT, "protocol": "TCP"}]},
                        {"from": [operator], "ports": [{"port": HTTP_PORT, "protocol": "TCP"}]},
                        {"ports": [{"port": METRICS_PORT, "protocol": "TCP"}]}],
            "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}],
        },
    }


def _service(name: str) -> dict[str, Any]:
    return cluster_ip_service(service_name(name), labels(name), _selector(name),
                              [("http", HTTP_PORT), ("grpc", GRPC_PORT), ("metrics", METRICS_PORT)])


RUN_AS = 10001
"""User and group of both containers (the router image's user)."""
_CONTAINER_SECURITY: dict[str, Any] = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                       "capabilities": {"drop": ["ALL"]}}


def _deployment(name: str, spec: TritonClusterSpec, render: list[str], render_image: str) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if spec.gpus_per_replica:
        resources = {"limits": {"nvidia.com/gpu": spec.gpus_per_replica}}
    container = {
        "name": "triton",
        "image": spec.image,
        "command": ["tritonserver"],
        "args": [
            f"--model-repository={MODELS_DIR}",
            "--strict-readiness=true",
            f"--http-port={HTTP_PORT}",
            f"--grpc-port={GRPC_PORT}",
            f"--metrics-port={METRICS_PORT}",
        ],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "startupProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10,
                         "failureThreshold": 60},
        "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 10},
        "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5},
        "resources": resources,
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True},
            {"name": "repository", "mountPath": REPO_MOUNT, "readOnly": True},
            # ONNX Runtime / TensorRT and DALI need more than the container runtime's 64 MiB /dev/shm.
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},  # the root filesystem is read-only
        ],
        "securityContext": _CONTAINER_SECURITY,
    }
    init = {
        "name": "render-model-repository",
        "image": render_image,
        "command": ["pacsflow"],
        "args": render,
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_MOUNT},
            {"name": "repository", "mountPath": REPO_MOUNT, "readOnly": True},
        ],
        "securityContext": _CONTAINER_SECURITY,
    }
    pod_spec = {
        # Non-root (the router image's user, which writes the rendered repository Triton then reads).
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [init],
        "containers": [container],
        "volumes": [
            {"name": "models", "emptyDir": {}},
            {"name": "repository", "persistentVolumeClaim": {
                "claimName": spec.model_repository.persistent_volume_claim, "readOnly": True}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    }
    return deployment(deployment_name(name), labels(name), _selector(name), spec.replicas, pod_spec)
