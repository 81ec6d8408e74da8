"""A real node (containerd, kubelet, kube-scheduler, kube-proxy) runs the operator's router children as pods.

Its own control plane (not the shared ``kube_cluster``: pods other tests create would start running here) and
the node of ``tests.peers.node``, with the images of ``scripts/images.sh archive``. The DicomRouter is rendered by
the operator's own ``render_router`` (ConfigMap, RBAC, spool PVC, Service, NetworkPolicy, Deployment with its
securityContext and probes) and applied with kubectl; the spool claim binds to a local PersistentVolume (no
dynamic provisioner on one node, docs/pods.md). Shown:

* the node is Ready and the Deployment becomes available through the router's real readiness probe, under
  the chart's pod security (non-root 10001, read-only root, no capabilities, RuntimeDefault seccomp);
* ``kubectl logs`` of the router pod works (kube-apiserver reaches the kubelet with certificates of the cluster CA);
* dcmtk's echoscu on the host reaches the router through its ClusterIP Service (kube-proxy's iptables rules);
* a spool the router cannot write makes ``/readyz`` answer 503: the pod goes NotReady, without a restart, and
  Ready again once the spool is writable;
* SIGKILL to the router container: the kubelet restarts it (restartCount 1), it answers again, and what it
  wrote on the spool volume is still there;
* deleting the Deployment leaves the spool claim and its volume bound.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from pacsflow_operator.reconcile.router import deployment_name, pvc_name, render_router
from pacsflow_operator.resources.v1alpha1 import DicomRouterSpec
from tests.peers.containerd import image_archives
from tests.peers.dcmtk import echoscu
from tests.peers.net import eventually
from tests.peers.node import NODE_NAME, Node, node_cluster

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

NAMESPACE = "default"
ROUTER = "ed"


@pytest.fixture(scope="module")
def archives() -> list[Path]:
    return image_archives()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, archives: list[Path]) -> Iterator[Node]:
    with node_cluster(tmp_path_factory.mktemp("node-cluster"), archives) as started:
        yield started


def apply(node: Node, *manifests: dict) -> None:
    node.kubectl("apply", "-f", str(_write(node, manifests)))


def _write(node: Node, manifests: tuple[dict, ...]) -> Path:
    path = node.workdir / f"manifest-{len(list(node.workdir.glob('manifest-*')))}.yaml"
    path.write_text(yaml.safe_dump_all(manifests, sort_keys=False))
    return path


def local_volume(name: str, path: Path, size: str) -> dict:
    """A ``local`` PersistentVolume on this node, kept after its claim goes (reclaim policy Retain)."""
    return {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "", "local": {"path": str(path)},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}]}]}},
        },
    }


def router_pod(node: Node) -> dict:
    pods = json.loads(node.kubectl("get", "pods", "-n", NAMESPACE, "-l",
                                   f"app.kubernetes.io/instance={ROUTER}", "-o", "json"))["items"]
    return pods[0] if pods else {}


def test_router_runs_as_a_pod_behind_its_service_and_survives_a_killed_container(
        node: Node, archives: list[Path], tmp_path: Path) -> None:
    ready, why = node.ready()
    assert ready, why
    image = next(f"localhost/pacsflow/router:{a.name.removesuffix('.tar').rsplit('-', 1)[1]}"
                 for a in archives if a.name.startswith("router-"))
    spec = DicomRouterSpec.model_validate({"aeTitle": "PACSFLOW", "port": 11112,
                                           "allowedCallingAETitles": ["STORESCU"], "spool": {"size": "1Gi"}})
    plan = render_router(ROUTER, NAMESPACE, spec, {}, image=image)
    volume_dir = tmp_path / "spool-pv"
    volume_dir.mkdir()
    # The spool claim (storageClassName unset, no default class) binds to this volume.
    pvc = next(c for c in plan.children if c["kind"] == "PersistentVolumeClaim")
    pvc["spec"]["storageClassName"] = ""
    apply(node, local_volume("ed-spool", volume_dir, "1Gi"), *plan.children)

    deployment = deployment_name(ROUTER)
    node.kubectl("rollout", "status", f"deployment/{deployment}", "-n", NAMESPACE, "--timeout=300s", timeout=320)
    pod = router_pod(node)
    container = pod["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == 10001
    # kube-apiserver reaches the kubelet (a serving certificate from the cluster CA, its own client certificate).
    assert "DICOM receiver PACSFLOW listening" in node.kubectl("logs", "-n", NAMESPACE, pod["metadata"]["name"])
    service = json.loads(node.kubectl("get", "service", deployment, "-n", NAMESPACE, "-o", "json"))
    cluster_ip = service["spec"]["clusterIP"]

    echo = eventually(lambda: (r := echoscu(11112, host=cluster_ip)).returncode == 0 and r,
                      "C-ECHO through the router's ClusterIP Service", 60)
    assert echo.returncode == 0
    spool_before = sorted(p.relative_to(volume_dir) for p in volume_dir.rglob("*"))
    assert spool_before, "the router wrote nothing on its spool volume"
    assert all(p.stat().st_uid == 10001 for p in volume_dir.rglob("*"))

    # /readyz: a spool the router cannot write takes the pod out of its Service, and does not restart it. (The router
    # runs as uid 10001 with no capabilities, so a mode stops it, as a full or read-only volume would.)
    instances = volume_dir / "spool" / "instances"
    mode = instances.stat().st_mode & 0o7777
    instances.chmod(0o555)
    try:
        eventually(lambda: not router_pod(node)["status"]["containerStatuses"][0]["ready"],
                   "the router pod NotReady with an unwritable spool", 60)
        assert "statuscode: 503" in node.kubectl("get", "events", "-n", NAMESPACE)
        assert router_pod(node)["status"]["containerStatuses"][0]["restartCount"] == 0
    finally:
        instances.chmod(mode)
    eventually(lambda: router_pod(node)["status"]["containerStatuses"][0]["ready"], "the router pod Ready again", 60)

    # SIGKILL the container's main process (what an OOM kill does); the kubelet restarts it in place.
    status = pod["status"]["containerStatuses"][0]
    pid = node.container_pid(status["containerID"])
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: (s := router_pod(node).get("status", {}).get("containerStatuses", [{}])[0]).get(
        "restartCount", 0) >= 1 and s.get("ready"), "the kubelet restarting the router and the pod Ready again",
        180, context=lambda: node.kubectl("describe", "pod", "-n", NAMESPACE, router_pod(node)["metadata"]["name"]))
    assert echoscu(11112, host=cluster_ip).returncode == 0
    assert set(spool_before) <= {p.relative_to(volume_dir) for p in volume_dir.rglob("*")}

    # Deleting the router's Deployment (what the DicomRouter's deletion cascades to) leaves the spool claim.
    node.kubectl("delete", "deployment", deployment, "-n", NAMESPACE, "--wait=true", timeout=180)
    claim = json.loads(node.kubectl("get", "pvc", pvc_name(ROUTER), "-n", NAMESPACE, "-o", "json"))
    assert claim["status"]["phase"] == "Bound"
    assert volume_dir.joinpath(spool_before[0]).exists()

