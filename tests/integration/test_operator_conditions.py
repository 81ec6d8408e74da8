"""Conditions tell the truth: DicomRouter Ready follows its Deployment's availability, AIUseCase ModelAvailable
follows what a real tritonserver answers for the pinned version.

The control plane (kube-apiserver + kube-controller-manager) has no node and no scheduler, so the router's pod
stays Pending and the Deployment never becomes available: that is the "not Ready" case. The test then writes
the pod's status the way a kubelet would (Running, Ready); kube-controller-manager's ReplicaSet and Deployment
controllers derive availableReplicas from it, and the operator's Ready follows.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from kubernetes import client

from tests.integration.test_operator import admin, cluster, crds, example, run_operator  # noqa: F401 - fixtures
from tests.peers.net import eventually
from tests.peers.triton import make_source_repository, serve

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _cond(obj: dict | None, ctype: str) -> dict:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions", []) if c["type"] == ctype), {})


def _as_kubelet_would(core: client.CoreV1Api, pod: client.V1Pod) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [{"type": t, "status": "True", "lastTransitionTime": now}
                  for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")]
    core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace,
                                     {"status": {"phase": "Running", "conditions": conditions, "startTime": now}})


def test_router_ready_only_when_its_deployment_is_available(cluster, run_operator, monkeypatch):  # noqa: F811
    monkeypatch.setenv("PACSFLOW_OPERATOR_TRITON_URL", "127.0.0.1:9")  # nothing listens: nothing claimed READY
    run_operator()
    cluster.create(example("TritonCluster"))
    cluster.create(example("DicomRouter"))
    unavailable = eventually(lambda: (c := _cond(cluster.get("DicomRouter", "ed-router"), "Ready"))
                             and c["status"] == "False" and c, "router Ready=False while no pod runs")
    assert unavailable["reason"] in ("DeploymentUnavailable", "DeploymentNotFound")
    assert _cond(cluster.get("DicomRouter", "ed-router"), "DeploymentAvailable")["status"] == "False"

    pods = eventually(lambda: cluster.core.list_namespaced_pod(
        cluster.ns, label_selector="app.kubernetes.io/instance=ed-router").items, "router pod created (Pending)")
    for pod in pods:
        _as_kubelet_would(cluster.core, pod)
    eventually(lambda: (cluster.child("Deployment", "ed-router-router").status.available_replicas or 0) >= 1,
               "Deployment available (kube-controller-manager)")
    ready = eventually(lambda: (c := _cond(cluster.get("DicomRouter", "ed-router"), "Ready"))
                       and c["status"] == "True" and c, "router Ready=True once the Deployment is available", 40)
    assert _cond(cluster.get("DicomRouter", "ed-router"), "DeploymentAvailable")["reason"] == "MinimumReplicasAvailable"
    assert ready["reason"] == "Reconciled"


def test_model_available_is_what_triton_reports(cluster, run_operator, monkeypatch, tmp_path):  # noqa: F811
    pinned = example("AIUseCase")["spec"]["model"]["version"]
    # Rendered for Triton's CPU python backend (what this machine's tritonserver runs), every version loaded.
    with serve(make_source_repository(tmp_path / "src", {pinned: 1}), tmp_path / "triton") as triton:
        monkeypatch.setenv("PACSFLOW_OPERATOR_TRITON_URL", triton.url)
        run_operator()
        cluster.create(example("TritonCluster"))
        cluster.create(example("DicomRouter"))
        cluster.create(example("AIUseCase"))
        ready = eventually(lambda: (c := _cond(cluster.get("AIUseCase", "ich-head-ct"), "ModelAvailable"))
                           and c["status"] == "True" and c, f"ModelAvailable=True for version {pinned}", 40)
        assert ready["reason"] == "ModelReady"

        cluster.patch_spec("AIUseCase", "ich-head-ct", {"model": {"version": pinned + 5}})  # not in the repository
        missing = eventually(lambda: (c := _cond(cluster.get("AIUseCase", "ich-head-ct"), "ModelAvailable"))
                             and c["status"] == "False" and c, "ModelAvailable=False for a version not loaded", 40)
        assert missing["reason"] == "ModelNotReady"
        assert _cond(cluster.get("AIUseCase", "ich-head-ct"), "Ready")["status"] == "False"
