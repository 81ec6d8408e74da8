"""End to end on a real node, as a platform team would run it (docs/pods.md).

``helm install`` of the chart with the images of ``make images`` (imported into the node's containerd): the
operator runs as a pod under the chart's RBAC and reaches kube-apiserver through the ``kubernetes`` Service.
A DicomRouter and an AIUseCase (assistive, the embedded backend) are applied; the operator's router pod becomes
Ready through its readiness probe, its spool claim bound to a local PersistentVolume. dcmtk ``storescu`` on the
host sends a phantom head CT to the router's ClusterIP Service (kube-proxy); the SR arrives at an Orthanc on the
host (the pod reaches it at the node's address) and passes dciodvfy and dsrdump. Deleting the DicomRouter
removes its Deployment and keeps the spool claim.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import yaml

from tests.peers.cluster import helm_path
from tests.peers.containerd import image_archives
from tests.peers.dcmtk import storescu
from tests.peers.net import eventually
from tests.peers.node import NODE_IP, NODE_NAME, Node, node_cluster
from tests.peers.orthanc import Orthanc
from tests.peers.srcheck import check_sr

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.cluster]

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "pacsflow"


@pytest.fixture(scope="module")
def archives() -> list[Path]:
    return image_archives()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, archives: list[Path]) -> Iterator[Node]:
    with node_cluster(tmp_path_factory.mktemp("pods-cluster"), archives) as started:
        yield started


def _version(archives: list[Path], name: str) -> str:
    return next(a.name.removesuffix(".tar").rsplit("-", 1)[1] for a in archives if a.name.startswith(f"{name}-"))


def _apply(node: Node, tmp_path: Path, *manifests: dict) -> None:
    path = tmp_path / f"manifest-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump_all(manifests, sort_keys=False))
    node.kubectl("apply", "-f", str(path))


def _describe(node: Node, kind: str) -> str:
    try:
        return node.kubectl("describe", kind, "-n", NAMESPACE)[-4000:]
    except Exception as exc:  # noqa: BLE001 - only the failure message's context
        return str(exc)


def test_helm_install_runs_the_operator_and_a_study_gets_its_sr_through_the_router_pod(
        node: Node, archives: list[Path], tmp_path: Path, studies) -> None:
    pacs = Orthanc(tmp_path / "orthanc", config={"DicomScpTimeout": 5}).start()
    try:
        _run(node, archives, tmp_path, pacs, studies)
    finally:
        pacs.stop()


def _run(node: Node, archives: list[Path], tmp_path: Path, pacs: Orthanc, studies) -> None:
    version = _version(archives, "router")
    start = time.monotonic()
    subprocess.run([
        str(helm_path()), "install", "pacsflow", str(REPO / "charts" / "pacsflow"), "--namespace", NAMESPACE,
        "--create-namespace", "--kubeconfig", str(node.cp.kubeconfig),
        "--set", "operator.image.repository=localhost/pacsflow/operator",
        "--set", f"operator.image.tag={_version(archives, 'operator')}",
        "--set", "operator.image.pullPolicy=Never",
        "--set", "router.image.repository=localhost/pacsflow/router", "--set", f"router.image.tag={version}",
        # The promotion policy stays enforced; the test's admin (O=system:masters) plays the clinical lead.
        "--set", "promotion.clinicalLeadGroup=system:masters",
    ], check=True, capture_output=True, text=True)
    node.kubectl("rollout", "status", "deployment/pacsflow", "-n", NAMESPACE, "--timeout=300s", timeout=320)
    operator_ready = time.monotonic() - start

    spool = tmp_path / "spool-pv"
    spool.mkdir()
    _apply(node, tmp_path, {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "ed-router-spool"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "", "local": {"path": str(spool)},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}]}]}}},
    }, {
        "apiVersion": "pacsflow.io/v1alpha1", "kind": "DicomRouter",
        "metadata": {"name": "ed", "namespace": NAMESPACE},
        "spec": {"aeTitle": "PACSFLOW", "port": 11112, "allowedCallingAETitles": ["STORESCU"],
                 "completion": {"stableSeconds": 2},
                 "destinations": [{"name": "pacs", "aeTitle": "ORTHANC", "host": NODE_IP, "port": pacs.dicom_port}],
                 "spool": {"size": "1Gi"}},
    }, {
        "apiVersion": "pacsflow.io/v1alpha1", "kind": "AIUseCase",
        "metadata": {"name": "ich-head-ct", "namespace": NAMESPACE, "annotations": {
            # Created assistive without evidence: the promotion policy wants who and why (docs/promotion.md).
            "pacsflow.io/changed-by": "pacsflow-admin",
            "pacsflow.io/promotion-override": "approver=e2e test; reason=phantom study through the pods"}},
        "spec": {"router": "ed", "model": {"name": "ich_detector", "version": 2}, "match": {"modalities": ["CT"]},
                 "mode": "assistive", "triage": {"criticalThreshold": 0.85},
                 "outputs": {"structuredReport": {"destination": "pacs"}}},
    })
    eventually(lambda: "ed-router" in node.kubectl("get", "deployments", "-n", NAMESPACE, "-o", "name"),
               "the operator (a pod) creating the router's Deployment", 180,
               context=lambda: _describe(node, "pods"))
    node.kubectl("rollout", "status", "deployment/ed-router", "-n", NAMESPACE, "--timeout=300s", timeout=320)
    router_ready = time.monotonic() - start
    service = json.loads(node.kubectl("get", "service", "ed-router", "-n", NAMESPACE, "-o", "json"))

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
    found = srs()
    assert len(found) == 1
    found[0].save_as(tmp_path / "sr.dcm")
    check = check_sr(tmp_path / "sr.dcm")
    assert check.errors == [], check.errors
    print(f"\nhelm install -> operator available {operator_ready:.1f}s, router Ready {router_ready:.1f}s, "
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
        "metadata": {"annotations": {"pacsflow.io/changed-by": "pacsflow-admin"}}, "spec": {"mode": "silent"}}))
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
    assert [c["status"]["phase"] for c in claims] == ["Bound"]
