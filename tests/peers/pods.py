"""The chart and pacsflow resources on a node cluster (:mod:`tests.peers.node`), as a platform team applies them.

Shared by ``tests/e2e/test_pods.py`` and ``bench/pods.py``: ``helm install`` with the local images, the spool's
local PersistentVolume, a DicomRouter sending to an Orthanc on the host, an assistive AIUseCase, and reading the
router pod's log lines with the kubelet's timestamps.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import yaml

from .cluster import helm_path
from .node import NODE_IP, NODE_NAME, Node

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "pacsflow"
#: Who the test's admin (O=system:masters) is to the promotion policy (``pacsflow.io/changed-by``).
ADMIN_USER = "pacsflow-admin"


def image_version(archives: Sequence[Path], name: str) -> str:
    """The tag of image ``name`` from its archive's file name (``<name>-<version>.tar``)."""
    return next(a.name.removesuffix(".tar").rsplit("-", 1)[1] for a in archives if a.name.startswith(f"{name}-"))


def apply(node: Node, workdir: Path, *manifests: dict) -> None:
    """``kubectl apply`` of ``manifests`` (written to a file in ``workdir``)."""
    path = workdir / f"manifest-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump_all(manifests, sort_keys=False))
    node.kubectl("apply", "-f", str(path))


def describe(node: Node, kind: str, namespace: str = NAMESPACE) -> str:
    """``kubectl describe`` of every ``kind`` in ``namespace`` (a failure message's context)."""
    try:
        return node.kubectl("describe", kind, "-n", namespace)[-4000:]
    except Exception as exc:  # noqa: BLE001 - only the failure message's context
        return str(exc)


def helm_install(node: Node, archives: Sequence[Path], *, namespace: str = NAMESPACE,
                 extra: Sequence[str] = ()) -> None:
    """``helm install pacsflow`` of the chart with the local images (pulled never), the promotion policy enforced
    with the test's admin as the clinical lead; ``extra``: more ``helm install`` arguments."""
    subprocess.run([
        str(helm_path()), "install", "pacsflow", str(REPO / "charts" / "pacsflow"), "--namespace", namespace,
        "--create-namespace", "--kubeconfig", str(node.cp.kubeconfig),
        "--set", "operator.image.repository=localhost/pacsflow/operator",
        "--set", f"operator.image.tag={image_version(archives, 'operator')}",
        "--set", "operator.image.pullPolicy=Never",
        "--set", "router.image.repository=localhost/pacsflow/router",
        "--set", f"router.image.tag={image_version(archives, 'router')}",
        # The promotion policy stays enforced; the test's admin (O=system:masters) plays the clinical lead.
        "--set", "promotion.clinicalLeadGroup=system:masters",
        *extra,
    ], check=True, capture_output=True, text=True)


def spool_volume(name: str, path: Path, size: str = "1Gi") -> dict:
    """A local PersistentVolume on the node (this node has no dynamic provisioner), reclaim policy Retain."""
    return {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
        "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "", "local": {"path": str(path)},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "kubernetes.io/hostname", "operator": "In", "values": [NODE_NAME]}]}]}}},
    }


def dicom_router(name: str, pacs_port: int, *, namespace: str = NAMESPACE, **spec: object) -> dict:
    """A DicomRouter accepting ``STORESCU`` whose ``pacs`` destination is an Orthanc on the host (the node's
    address, as the pod sees it); ``spec`` adds or replaces spec keys."""
    return {
        "apiVersion": "pacsflow.io/v1alpha1", "kind": "DicomRouter",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"aeTitle": "PACSFLOW", "port": 11112, "allowedCallingAETitles": ["STORESCU"],
                 "completion": {"stableSeconds": 2},
                 "destinations": [{"name": "pacs", "aeTitle": "ORTHANC", "host": NODE_IP, "port": pacs_port}],
                 "spool": {"size": "1Gi"}, **spec},
    }


def override(reason: str) -> dict[str, str]:
    """The annotations a promotion without evidence needs: who changed the mode, and a clinical lead's override."""
    return {"pacsflow.io/changed-by": ADMIN_USER,
            "pacsflow.io/promotion-override": f"approver=e2e test; reason={reason}"}


def assistive_use_case(name: str, router: str, *, namespace: str = NAMESPACE) -> dict:
    """An assistive ``ich_detector`` AIUseCase on CT studies sending its SR to ``pacs``."""
    return {
        "apiVersion": "pacsflow.io/v1alpha1", "kind": "AIUseCase",
        # Created assistive without evidence: the promotion policy wants who and why (docs/promotion.md).
        "metadata": {"name": name, "namespace": namespace,
                     "annotations": override("phantom study through the pods")},
        "spec": {"router": router, "model": {"name": "ich_detector", "version": 2}, "match": {"modalities": ["CT"]},
                 "mode": "assistive", "triage": {"criticalThreshold": 0.85},
                 "outputs": {"structuredReport": {"destination": "pacs"}}},
    }


def log_lines(node: Node, pod_prefix: str, namespace: str = NAMESPACE) -> Iterator[tuple[float, str]]:
    """``(unix time, text)`` of each log line of pods named ``pod_prefix*``: the kubelet's CRI log format,
    ``<RFC 3339 nano time> <stream> <tag> <text>``, the time being when the runtime read the line."""
    for line in node.pod_logs(namespace, pod_prefix).splitlines():
        stamp, _, rest = line.partition(" ")
        text = rest.split(" ", 2)[-1]
        try:
            yield _unix_time(stamp), text
        except ValueError:
            continue  # a line being written


def _unix_time(stamp: str) -> float:
    # RFC 3339 with nanoseconds (2026-11-30T22:51:00.123456789Z or +00:00): datetime keeps microseconds.
    main, _, rest = stamp.partition(".")
    digits = "".join(c for c in rest if c.isdigit())
    zone = rest[len(digits):] or "Z"
    parsed = datetime.fromisoformat(f"{main}.{(digits + '000000')[:6]}{'+00:00' if zone == 'Z' else zone}")
    return parsed.timestamp()
