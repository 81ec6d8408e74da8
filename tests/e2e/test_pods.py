"""End to end on a real node, as a platform team would run it (docs/pods.md).

``helm install`` of the chart with the images of ``make images`` (imported into the node's containerd): the
operator runs as a pod under the chart's RBAC and reaches kube-apiserver through the ``kubernetes`` Service.
The node runs CoreDNS (cluster DNS; a pod resolves a Service's ``<svc>.<ns>.svc.cluster.local``). A TritonCluster
(the Triton-CPU image, the repository rendered by the router image's init container from a claim on a local
PersistentVolume), a DicomRouter that infers on it and an assistive AIUseCase are applied; the Triton pod and the
router pod become Ready through their readiness probes, and the operator (a pod) finds the model READY on the
Triton pod (``ModelAvailable``). dcmtk ``storescu`` on the host sends a phantom head CT to the router's ClusterIP
Service (kube-proxy); the router finds Triton by its Service's DNS name, Triton's own metrics count the study's
inferences, and the SR arrives at an Orthanc on the host (the pod reaches it at the node's address) and passes
dciodvfy and dsrdump. Deleting the DicomRouter removes its Deployment and keeps the spool claim.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import requests

from tests.peers.containerd import image_archives
from tests.peers.dcmtk import storescu
from tests.peers.net import eventually
from tests.peers.node import Node, NodeError, node_cluster
from tests.peers.orthanc import Orthanc
from tests.peers.pods import (
    ADMIN_USER,
    NAMESPACE,
    REPO,
    apply,
    assistive_use_case,
    describe,
    dicom_router,
    helm_install,
    image_version,
    spool_volume,
)
from tests.peers.srcheck import check_sr

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.cluster]

TRITON = "cpu"
"""The TritonCluster: its Deployment and Service are ``cpu-triton``."""
SERVED = "ich_detector_v2"
"""The Triton model serving the use case's pinned version (config.served_model_name: the version's ensemble)."""


@pytest.fixture(scope="module")
def archives() -> list[Path]:
    return image_archives()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, archives: list[Path]) -> Iterator[Node]:
    with node_cluster(tmp_path_factory.mktemp("pods-cluster"), archives) as started:
        yield started


def _deployment_available(node: Node, name: str) -> bool:
    try:
        found = json.loads(node.kubectl("get", "deployment", name, "-n", NAMESPACE, "-o", "json"))
    except NodeError:  # not created by the operator yet
        return False
    return found.get("status", {}).get("availableReplicas", 0) >= 1


def _condition(node: Node, kind: str, name: str, type_: str) -> str | None:
    status = json.loads(node.kubectl("get", kind, name, "-n", NAMESPACE, "-o", "json")).get("status", {})
    return next((c["status"] for c in status.get("conditions", []) if c["type"] == type_), None)


def _triton_counts(url: str, model: str) -> dict[str, float]:
    """Triton's own counters for ``model`` (all versions) from its Prometheus endpoint: metric name -> value."""
    counts: dict[str, float] = {}
    pattern = re.compile(r'(nv_inference_(?:request_success|count))\{model="([^"]+)",version="[^"]*"\} (\S+)')
    for line in requests.get(url, timeout=10).text.splitlines():
        if (match := pattern.match(line)) and match.group(2) == model:
            counts[match.group(1)] = counts.get(match.group(1), 0.0) + float(match.group(3))
    return counts


def _resolve_in_a_pod(node: Node, image: str, name: str, workdir: Path) -> str:
    """The address a pod's own resolver (libc, the kubelet's resolv.conf: cluster DNS) gives ``name``."""
    restricted = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                  "capabilities": {"drop": ["ALL"]}}
    apply(node, workdir, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "resolve", "namespace": NAMESPACE},
        "spec": {"restartPolicy": "Never",
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                     "seccompProfile": {"type": "RuntimeDefault"}},
                 "containers": [{"name": "resolve", "image": image, "imagePullPolicy": "Never",
                                 "command": ["python3", "-c",
                                             f"import socket; print('resolved', socket.gethostbyname({name!r}))"],
                                 "securityContext": restricted}]}})
    logs = eventually(lambda: re.search(r"resolved (\S+)", node.pod_logs(NAMESPACE, "resolve")),
                      f"a pod resolving {name}", 120, context=lambda: describe(node, "pod/resolve"))
    node.kubectl("delete", "pod", "resolve", "-n", NAMESPACE, "--wait=false")
    return logs.group(1)


def test_helm_install_runs_the_operator_and_a_study_gets_its_sr_through_the_router_pod(
        node: Node, archives: list[Path], tmp_path: Path, studies) -> None:
    pacs = Orthanc(tmp_path / "orthanc", config={"DicomScpTimeout": 5}).start()
    try:
        _run(node, archives, tmp_path, pacs, studies)
    finally:
        pacs.stop()


def _run(node: Node, archives: list[Path], tmp_path: Path, pacs: Orthanc, studies) -> None:
    start = time.monotonic()
    helm_install(node, archives)
    node.kubectl("rollout", "status", "deployment/pacsflow", "-n", NAMESPACE, "--timeout=300s", timeout=320)
    operator_ready = time.monotonic() - start
    node.wait_dns()

    spool = tmp_path / "spool-pv"
    spool.mkdir()
    # The model team's source repository on a claim (a local PV here); Triton's init container renders it.
    models = tmp_path / "model-repo-pv"
    shutil.copytree(REPO / "model_repository", models)
    repository = spool_volume("model-repo", models)
    # Pre-bound both ways, so the router's spool claim cannot take this volume.
    repository["spec"]["claimRef"] = {"namespace": NAMESPACE, "name": "model-repo"}
    apply(node, tmp_path, repository, {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "model-repo", "namespace": NAMESPACE},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "", "volumeName": "model-repo",
                 "resources": {"requests": {"storage": "1Gi"}}},
    }, {
        # crds/examples/tritoncluster.yaml on the Triton-CPU image, without a GPU.
        "apiVersion": "pacsflow.io/v1alpha1", "kind": "TritonCluster",
        "metadata": {"name": TRITON, "namespace": NAMESPACE},
        "spec": {"image": f"localhost/pacsflow/triton-cpu:{image_version(archives, 'triton-cpu')}",
                 "replicas": 1, "gpusPerReplica": 0, "modelRepository": {"persistentVolumeClaim": "model-repo"}},
    })
    apply(node, tmp_path, spool_volume("ed-router-spool", spool),
          dicom_router("ed", pacs.dicom_port, tritonCluster=TRITON), assistive_use_case("ich-head-ct", "ed"))
    eventually(lambda: "ed-router" in node.kubectl("get", "deployments", "-n", NAMESPACE, "-o", "name"),
               "the operator (a pod) creating the router's Deployment", 180,
               context=lambda: describe(node, "pods"))
    triton = json.loads(node.kubectl("get", "service", f"{TRITON}-triton", "-n", NAMESPACE, "-o", "json"))
    # Cluster DNS: a pod's own resolver finds the Triton Service by its name (the router's config names it so).
    assert _resolve_in_a_pod(node, f"localhost/pacsflow/router:{image_version(archives, 'router')}",
                             f"{TRITON}-triton.{NAMESPACE}.svc.cluster.local", tmp_path) \
        == triton["spec"]["clusterIP"]
    eventually(lambda: _deployment_available(node, f"{TRITON}-triton"), "the Triton pod Ready (/v2/health/ready)",
               300, context=lambda: describe(node, "pods") + node.pod_logs(NAMESPACE, f"{TRITON}-triton")[-3000:])
    triton_ready = time.monotonic() - start
    node.kubectl("rollout", "status", "deployment/ed-router", "-n", NAMESPACE, "--timeout=300s", timeout=320)
    router_ready = time.monotonic() - start
    service = json.loads(node.kubectl("get", "service", "ed-router", "-n", NAMESPACE, "-o", "json"))
    # The operator, a pod, asks the Triton pod whether the pinned version is READY (a 10 s timer).
    eventually(lambda: _condition(node, "aiusecase", "ich-head-ct", "ModelAvailable") == "True",
               "the AIUseCase's ModelAvailable=True (the operator pod asking the Triton pod)", 90,
               context=lambda: node.kubectl("get", "aiusecase", "ich-head-ct", "-n", NAMESPACE, "-o", "yaml"))
    # Triton's metrics port, from the host through its ClusterIP (kube-proxy).
    triton_metrics = f"http://{triton['spec']['clusterIP']}:8002/metrics"
    before = eventually(lambda: _triton_counts(triton_metrics, SERVED), "Triton's metrics for the served model", 60)

    paths, truth = studies(31, lesion=True)
    # The rollout is complete once the pod is Ready; kube-proxy programs the Service's rules from the endpoints a
    # moment later, so the first association is retried until the ClusterIP answers (a refused connection stores
    # nothing, so a retry cannot duplicate).
    sent = time.monotonic()
    result = eventually(lambda: (r := storescu(11112, paths, host=service["spec"]["clusterIP"])).acknowledged and r,
                        "the router's ClusterIP accepting the study", 60)
    assert len(result.acknowledged) == len(paths), result.output[-2000:]

    def srs() -> list[pydicom.Dataset]:
        return [pydicom.dcmread(BytesIO(pacs.instance_file(i)))
                for i in pacs.instances(modality="SR", study_uid=truth.study_instance_uid)]

    eventually(lambda: srs(), "the SR at Orthanc", 300,
               context=lambda: node.pod_logs(NAMESPACE, "ed-router")[-4000:])
    first_sr = time.monotonic() - start
    # The router pod preprocessed and reported with the manifest the Triton pod's ensemble carries (mirrored on its
    # spool volume), not only with the copy in its own image.
    assert "manifest of ich_detector v2: model.json as Triton serves it" in node.pod_logs(NAMESPACE, "ed-router")
    # The inference went through the Triton pod: Triton's own counters for the pinned version's ensemble rose by
    # one inference per slice of the study, in at least one successful request.
    after = _triton_counts(triton_metrics, SERVED)
    assert after["nv_inference_count"] - before["nv_inference_count"] == len(paths), (before, after)
    assert after["nv_inference_request_success"] - before["nv_inference_request_success"] >= 1, (before, after)
    found = srs()
    assert len(found) == 1
    found[0].save_as(tmp_path / "sr.dcm")
    check = check_sr(tmp_path / "sr.dcm")
    assert check.errors == [], check.errors
    print(f"\nhelm install -> operator available {operator_ready:.1f}s, Triton pod Ready {triton_ready:.1f}s, "
          f"router Ready {router_ready:.1f}s, "
          f"first SR stored {first_sr:.1f}s (study sent -> SR {time.monotonic() - sent:.1f}s)")

    # SIGKILL the router container right after the next study is acknowledged (before its stable window ends):
    # the kubelet restarts it, the spool volume still holds the instances, and the study gets exactly one SR.
    paths, truth = studies(32, lesion=False)
    result = storescu(11112, paths, host=service["spec"]["clusterIP"])
    assert len(result.acknowledged) == len(paths), result.output[-2000:]
    pod = json.loads(node.kubectl("get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/instance=ed",
                                  "-o", "json"))["items"][0]
    os.kill(node.container_pid(pod["status"]["containerStatuses"][0]["containerID"]), signal.SIGKILL)
    eventually(lambda: json.loads(node.kubectl("get", "pod", pod["metadata"]["name"], "-n", NAMESPACE, "-o",
                                               "json"))["status"]["containerStatuses"][0]["restartCount"] >= 1,
               "the kubelet restarting the killed router container", 120)
    eventually(lambda: srs(), "the SR of the study acknowledged before the kill", 300,
               context=lambda: node.pod_logs(NAMESPACE, "ed-router")[-4000:])
    time.sleep(10)  # a duplicate would come from the restarted router re-running the study: give it the time
    assert len(pacs.received(modality="SR", study_uid=truth.study_instance_uid)) == 1, \
        "exactly one SR C-STORE request at Orthanc for the study acknowledged before the kill"

    # Demotion to silent (the kill switch): the operator re-renders the ConfigMap and the router pod, watching it
    # through the API, applies it; time from the patch to the router's "reloaded" log line.
    demote = time.monotonic()
    node.kubectl("patch", "aiusecase", "ich-head-ct", "-n", NAMESPACE, "--type", "merge", "-p", json.dumps({
        "metadata": {"annotations": {"pacsflow.io/changed-by": ADMIN_USER}}, "spec": {"mode": "silent"}}))
    eventually(lambda: "ich-head-ct=silent" in node.pod_logs(NAMESPACE, "ed-router"),
               "the router pod applying the demotion", 120,
               context=lambda: node.pod_logs(NAMESPACE, "ed-router")[-3000:])
    demoted = time.monotonic() - demote
    paths, truth = studies(33, lesion=True)
    result = storescu(11112, paths, host=service["spec"]["clusterIP"])
    assert len(result.acknowledged) == len(paths), result.output[-2000:]
    time.sleep(15)  # stable window (2 s) + analysis: an assistive router would have sent the SR by now
    assert srs() == [], "a silent use case sends no SR"
    print(f"demotion -> router applied it {demoted:.1f}s")

    # The operator's status tells the truth about the router it runs.
    router = json.loads(node.kubectl("get", "dicomrouter", "ed", "-n", NAMESPACE, "-o", "json"))
    assert router["status"]["conditions"], router["status"]

    # Deleting the DicomRouter cascades to its Deployment; the spool claim (acknowledged instances) stays.
    node.kubectl("delete", "dicomrouter", "ed", "-n", NAMESPACE, "--wait=true", timeout=180)
    eventually(lambda: "ed-router" not in node.kubectl("get", "deployments", "-n", NAMESPACE, "-o", "name"),
               "the router's Deployment garbage-collected", 120)
    claims = json.loads(node.kubectl("get", "pvc", "-n", NAMESPACE, "-o", "json"))["items"]
    assert {c["metadata"]["name"]: c["status"]["phase"] for c in claims if c["metadata"]["name"] != "model-repo"} \
        == {"ed-router-spool": "Bound"}
