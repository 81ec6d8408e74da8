"""Integration fixtures: a real Kubernetes control plane shared by the whole test session."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.peers.cluster import ControlPlane, control_plane


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager v1.34 on free loopback ports.

    Started on first use (building the binaries if the cache is empty, see docs/cluster.md) and
    stopped at the end of the session. Tests share it, so each test works in its own namespace
    (``kube_namespace``) and deletes what it creates cluster-wide (CRDs).
    """
    with control_plane(tmp_path_factory.mktemp("kube")) as cp:
        yield cp


@pytest.fixture
def kube_namespace(kube_cluster: ControlPlane) -> Iterator[str]:
    """A fresh namespace on ``kube_cluster``; deleted after the test (deletion not awaited)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    with kube_cluster.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        yield name
        core.delete_namespace(name)


@pytest.fixture(autouse=True)
def _restore_kopf_default_registry() -> Iterator[None]:
    """``kopf run`` with a private registry makes it the process-wide default and never restores it; without this,
    a later KopfRunner in the same pytest process would run an earlier test's handlers (e.g. a ConfigMap watcher
    that the chart's least-privilege RBAC rightly forbids)."""
    import kopf

    saved = kopf.get_default_registry()
    yield
    kopf.set_default_registry(saved)
