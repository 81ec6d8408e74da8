"""The test control plane behaves like a real cluster in the ways pacsflow's operator relies on.

kube-apiserver + kube-controller-manager v1.34 and etcd, real processes (tests/peers/cluster.py):
cascading delete by the garbage collector, namespace deletion, CEL transition rules on a CRD,
kopf connecting through the kubeconfig, and ``make cluster-up``/``cluster-down`` for developers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import kopf
import kubernetes
import pytest
from kopf.testing import KopfRunner
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.peers.cluster import REPO, ControlPlane, ControlPlaneError, helm_path, pid_alive, start
from tests.peers.net import eventually
from tests.peers.node import host_node_lock

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def gone(read: Callable[[], object]) -> bool:
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


@pytest.fixture
def core(kube_cluster: ControlPlane):
    with kube_cluster.api_client() as api:
        yield client.CoreV1Api(api)


def test_garbage_collector_deletes_dependents_of_a_deleted_owner(core, kube_namespace):
    owner = core.create_namespaced_config_map(
        kube_namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"), data={"k": "v"})
    )
    child_meta = client.V1ObjectMeta(
        name="child",
        owner_references=[
            client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
        ],
    )
    core.create_namespaced_config_map(kube_namespace, client.V1ConfigMap(metadata=child_meta, data={"k": "v"}))

    core.delete_namespaced_config_map("owner", kube_namespace)

    eventually(
        lambda: gone(lambda: core.read_namespaced_config_map("child", kube_namespace)),
        "garbage collection of the owned ConfigMap",
    )


def test_deleting_a_namespace_removes_it_and_its_objects(core):
    # The namespace controller (kube-controller-manager) empties a terminating namespace and
    # removes its finalizer; without it the namespace would stay Terminating forever.
    name = "t-ns-deletion"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x")))
    core.delete_namespace(name)
    eventually(lambda: gone(lambda: core.read_namespace(name)), "deletion of the namespace")


RANK = "{'silent': 0, 'assistive': 1, 'triage': 2}"
PHASE_RULE_MESSAGE = "mode may be promoted one phase at a time (silent -> assistive -> triage)"
PHASE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "rollouts.smoke.test.pacsflow.io"},
    "spec": {
        "group": "smoke.test.pacsflow.io",
        "names": {"kind": "Rollout", "plural": "rollouts", "singular": "rollout", "listKind": "RolloutList"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["mode"],
                                "properties": {
                                    "mode": {"type": "string", "enum": ["silent", "assistive", "triage"]}
                                },
                                # A transition rule (it reads oldSelf): only CEL in the API server
                                # can enforce it, so a rejected update proves CEL runs.
                                "x-kubernetes-validations": [
                                    {
                                        "rule": f"{RANK}[self.mode] <= {RANK}[oldSelf.mode] + 1",
                                        "message": PHASE_RULE_MESSAGE,
                                    }
                                ],
                            }
                        },
                    }
                },
            }
        ],
    },
}


@pytest.fixture
def phase_crd(kube_cluster: ControlPlane):
    with kube_cluster.api_client() as api:
        ext = client.ApiextensionsV1Api(api)
        ext.create_custom_resource_definition(PHASE_CRD)

        def established() -> bool:
            status = ext.read_custom_resource_definition(PHASE_CRD["metadata"]["name"]).status
            return any(c.type == "Established" and c.status == "True" for c in status.conditions or [])

        eventually(established, "the CRD becoming Established")
        try:
            yield client.CustomObjectsApi(api)
        finally:
            ext.delete_custom_resource_definition(PHASE_CRD["metadata"]["name"])


def test_crd_transition_rule_is_enforced_by_the_api_server(phase_crd, kube_namespace):
    group, version, plural = "smoke.test.pacsflow.io", "v1", "rollouts"

    def set_mode(mode: str):
        return phase_crd.patch_namespaced_custom_object(
            group, version, kube_namespace, plural, "ich", {"spec": {"mode": mode}}
        )

    phase_crd.create_namespaced_custom_object(
        group, version, kube_namespace, plural,
        {"apiVersion": f"{group}/{version}", "kind": "Rollout", "metadata": {"name": "ich"},
         "spec": {"mode": "silent"}},
    )

    with pytest.raises(ApiException) as rejected:
        set_mode("triage")
    assert rejected.value.status == 422
    assert PHASE_RULE_MESSAGE in json.loads(rejected.value.body)["message"]

    for promoted_or_demoted in ("assistive", "triage", "assistive", "triage", "silent"):
        assert set_mode(promoted_or_demoted)["spec"]["mode"] == promoted_or_demoted


def test_kopf_operator_connects_through_the_kubeconfig(kube_cluster, core, kube_namespace, monkeypatch):
    # The recipe for operator tests: a private registry (nothing leaks into other tests), an
    # explicit login from KUBECONFIG (kopf's default piggybacks on the kubernetes client, which
    # reads KUBECONFIG once at import and would reach a developer's real cluster), --standalone
    # (no peering CRD), one namespace.
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.kubeconfig))
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs):
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.create("configmaps", labels={"pacsflow.io/smoke": "kopf"}, registry=registry)
    def mark_seen(patch, **_):
        patch.metadata.annotations["pacsflow.io/seen-by"] = "kopf"

    def annotation() -> str | None:
        annotations = core.read_namespaced_config_map("probe", kube_namespace).metadata.annotations or {}
        return annotations.get("pacsflow.io/seen-by")

    args = ["run", "--standalone", "--namespace", kube_namespace]
    with KopfRunner(args, registry=registry, timeout=60) as runner:
        core.create_namespaced_config_map(
            kube_namespace,
            client.V1ConfigMap(metadata=client.V1ObjectMeta(name="probe", labels={"pacsflow.io/smoke": "kopf"})),
        )
        eventually(lambda: annotation() == "kopf", "kopf's handler annotating the ConfigMap")

    assert runner.exception is None
    assert runner.exit_code == 0


def test_make_cluster_up_and_down_run_a_control_plane_for_developers():
    # Same entry point as `make cluster-up`/`cluster-down` (scripts/cluster.sh), in a private dir.
    # A short directory: the kubelet's unix sockets live under it and a socket path is at most 107 bytes.
    cluster_dir = Path(tempfile.mkdtemp(prefix="pfc-"))
    script = str(REPO / "scripts" / "cluster.sh")
    env = {**os.environ, "CLUSTER_DIR": str(cluster_dir), "PY": sys.executable}
    env.pop("KUBECONFIG", None)
    with host_node_lock():  # make cluster-up starts a node too: one per host
        _cluster_up_and_down(script, cluster_dir, env)


def _cluster_up_and_down(script: str, cluster_dir: Path, env: dict[str, str]) -> None:
    up = subprocess.run([script, "up"], env=env, capture_output=True, text=True, timeout=300)
    pids = {}
    try:
        assert up.returncode == 0, up.stderr
        kubeconfig = cluster_dir / "kubeconfig"
        assert f"KUBECONFIG={kubeconfig}" in up.stdout
        pids = {p.stem: int(p.read_text()) for p in (cluster_dir / "pids").glob("*.pid")}
        # The control plane and the node (docs/pods.md).
        assert sorted(pids) == ["containerd", "etcd", "kube-apiserver", "kube-controller-manager", "kube-proxy",
                                "kube-scheduler", "kubelet"]

        # The command has exited; the control plane it left behind answers with the kubeconfig.
        with kubernetes.config.new_client_from_config(config_file=str(kubeconfig)) as api:
            names = [ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items]
            nodes = client.CoreV1Api(api).list_node().items
            dns = client.AppsV1Api(api).read_namespaced_deployment("coredns", "kube-system")
        assert "kube-system" in names
        assert dns.status.available_replicas == 1  # make cluster-up waits for the cluster DNS (docs/pods.md)
        assert [c.status for n in nodes for c in n.status.conditions if c.type == "Ready"] == ["True"]
    finally:
        down = subprocess.run([script, "down"], env=env, capture_output=True, text=True, timeout=120)
        if down.returncode == 0:
            shutil.rmtree(cluster_dir, ignore_errors=True)
    assert down.returncode == 0, down.stderr
    assert pids and not any(pid_alive(pid, component) for component, pid in pids.items())


def test_helm_installs_a_chart_that_requires_kubernetes_1_34(kube_cluster, kube_namespace, tmp_path):
    # kubeVersion makes helm check the server's /version: it proves the binaries carry their
    # real version (an unstamped build reports v0.0.0-master and every such chart fails).
    helm = str(helm_path())
    env = kube_cluster.env()
    subprocess.run([helm, "create", "demo"], cwd=tmp_path, env=env, check=True, capture_output=True)
    chart_yaml = tmp_path / "demo" / "Chart.yaml"
    chart_yaml.write_text(chart_yaml.read_text() + 'kubeVersion: ">=1.34.0-0 <1.35.0-0"\n')

    install = subprocess.run(
        [helm, "install", "demo", str(tmp_path / "demo"), "--namespace", kube_namespace],
        env=env, capture_output=True, text=True,
    )

    assert install.returncode == 0, install.stderr
    with kube_cluster.api_client() as api:
        deployment = client.AppsV1Api(api).read_namespaced_deployment("demo", kube_namespace)
        assert deployment.metadata.labels["app.kubernetes.io/managed-by"] == "Helm"
        # Deployment -> ReplicaSet -> Pod runs in kube-controller-manager (the Pod then stays
        # Pending: there are no nodes).
        core = client.CoreV1Api(api)
        eventually(
            lambda: core.list_namespaced_pod(kube_namespace, label_selector="app.kubernetes.io/name=demo").items,
            "the Deployment's Pod being created",
        )


def test_a_component_that_fails_to_start_is_reported_and_nothing_is_left_running(tmp_path):
    # The one stand-in here replaces the API server binary on purpose: the behaviour under test
    # is the launcher's error path (real etcd is started and must be stopped again).
    binaries = tmp_path / "bin"
    binaries.mkdir()
    for name in ("kube-apiserver", "kube-controller-manager"):
        fake = binaries / name
        fake.write_text("#!/bin/sh\necho 'Error: unknown flag: --pretend-misconfigured' >&2\nexit 1\n")
        fake.chmod(0o755)

    with pytest.raises(ControlPlaneError) as failed:
        start(tmp_path / "cp", binaries=binaries, timeout=30)

    assert "kube-apiserver exited with status 1" in str(failed.value)
    assert "--pretend-misconfigured" in str(failed.value)
    assert (tmp_path / "cp" / "logs" / "etcd.log").exists()  # etcd did start ...
    assert processes_mentioning(str(tmp_path)) == []  # ... and was stopped


def processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids
