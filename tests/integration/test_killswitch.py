"""The kill switch on the real kube-apiserver: a demotion reaches the router in seconds and holds its queued outputs.

The router runs in-process as the ServiceAccount the operator renders for it (a real token from the API server,
bound to the operator's Role: get and watch on its own ConfigMap only), watching that ConfigMap through the API.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pacsflow_operator.reconcile import router as router_rc
from pacsflow_operator.resources.v1alpha1 import DicomRouterSpec
from pacsflow_router import metrics
from pacsflow_router.config import RoutingConfig, parse_config, render_config
from pacsflow_router.service import RouterService
from tests.peers.cluster import ControlPlane
from tests.peers.net import eventually, free_port
from tests.peers.webhook import HttpReceiver

ROUTER = "ed"


def _rbac_children(namespace: str) -> list[dict[str, Any]]:
    spec = DicomRouterSpec.model_validate({"aeTitle": "PACSFLOW", "allowedCallingAETitles": ["CT1"]})
    plan = router_rc.render_router(ROUTER, namespace, spec, {}, image="img")
    return [c for c in plan.children if c["kind"] in ("ServiceAccount", "Role", "RoleBinding")]


def _service_account_kubeconfig(kube_cluster: ControlPlane, api: client.ApiClient, namespace: str,
                                path: Path) -> Path:
    token = client.CoreV1Api(api).create_namespaced_service_account_token(
        router_rc.service_account_name(ROUTER), namespace, client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))).status.token
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": kube_cluster.server_url,
                                               "certificate-authority": str(kube_cluster.pki.ca_crt)}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": namespace}}],
    }))
    return path


def _config(tmp_path: Path, namespace: str, webhook_url: str, ich_mode: str) -> RoutingConfig:
    model = {"name": "ich_detector", "version": 1}
    return parse_config({
        "spoolDir": str(tmp_path / "spool"), "audit": {"url": f"sqlite:///{tmp_path / 'audit.db'}"},
        "port": free_port(), "metrics": {"port": free_port()},
        "webhooks": [{"name": "hook", "url": webhook_url}],
        "useCases": [{"name": "ich", "model": model, "mode": ich_mode},
                     {"name": "pe", "model": model, "mode": "triage"}],
        "configMap": {"namespace": namespace, "name": router_rc.config_map_name(ROUTER)},
    })


def _mode(service: RouterService, name: str) -> str:
    return next(u.mode for u in service.config.use_cases if u.name == name)


def test_demotion_reaches_the_router_in_seconds_and_holds_its_queued_outputs(
        kube_cluster: ControlPlane, kube_namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    hook_port = free_port()  # nothing listens yet: the webhook receiver is down, so items stay queued
    config = _config(tmp_path, kube_namespace, f"http://127.0.0.1:{hook_port}/alert", "triage")
    cm_name = router_rc.config_map_name(ROUTER)
    config_file = tmp_path / "routing.yaml"  # the mounted file, which the kubelet would refresh a minute later
    config_file.write_text(render_config(config))
    with kube_cluster.api_client() as admin:
        core = client.CoreV1Api(admin)
        core.create_namespaced_config_map(kube_namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=cm_name), data={"routing.yaml": render_config(config)}))
        core.create_namespaced_config_map(kube_namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="someone-else"), data={"x": "y"}))
        for child in _rbac_children(kube_namespace):
            _create(admin, kube_namespace, child)
        monkeypatch.setenv("KUBECONFIG", str(_service_account_kubeconfig(
            kube_cluster, admin, kube_namespace, tmp_path / "router-sa.kubeconfig")))

        # The Role is that one object: the router's identity may not read another ConfigMap.
        from pacsflow_router.configwatch import default_api_client
        sa_api = default_api_client()
        assert sa_api is not None
        with pytest.raises(ApiException) as refused:
            client.CoreV1Api(sa_api).read_namespaced_config_map("someone-else", kube_namespace)
        assert refused.value.status == 403

        service = RouterService(config, config_path=str(config_file), config_poll_seconds=0.5)
        service.start()
        try:
            assert service.config_watcher is not None
            assert service.config_watcher.connected.wait(30), "the router's watch on its ConfigMap never opened"
            for i, use_case in enumerate(("ich", "ich", "pe")):
                service.outbox.enqueue_message("webhook", "hook", f"key-{i}", b"{}", kind="webhook",
                                               study_key=f"k{i}", use_case=use_case)
            eventually(lambda: service.outbox.counts("webhook").get("pending") == 3, "items queued", timeout=10)

            # The clinical lead demotes ich: the ConfigMap changes on the API server; the mounted file does not.
            demoted = config.model_copy(update={"use_cases": [
                u.model_copy(update={"mode": "silent"}) if u.name == "ich" else u for u in config.use_cases]})
            t0 = time.monotonic()
            core.patch_namespaced_config_map(cm_name, kube_namespace, {"data": {"routing.yaml": render_config(demoted)}})
            eventually(lambda: _mode(service, "ich") == "silent", "demotion seen by the router", timeout=10)
            elapsed = time.monotonic() - t0
            print(f"ConfigMap edit -> router config silent: {elapsed:.3f} s")
            assert elapsed < 2.0, elapsed
            # What a dashboard sees on the router's /metrics.
            assert metrics.REGISTRY.get_sample_value("pacsflow_use_case_mode", {"use_case": "ich", "mode": "silent"}) == 1
            assert metrics.REGISTRY.get_sample_value("pacsflow_use_case_mode", {"use_case": "ich", "mode": "triage"}) == 0

            # The receiver comes up: pe's item goes out, ich's two are held and audited as such.
            receiver = HttpReceiver(port=hook_port)
            try:
                receiver.wait_delivered(1, timeout=60)
                eventually(lambda: service.outbox.pending("webhook") == 0, "queue drained", timeout=30)
                time.sleep(1.0)  # a held item that were sent would arrive now
                assert len(receiver.delivered()) == 1
            finally:
                receiver.stop()
            outcomes = {(e["study_key"], e["outcome"]) for e in service.audit.events()}
            assert {("k0", "held"), ("k1", "held"), ("k2", "delivered")} <= outcomes
            assert not {("k0", "delivered"), ("k1", "delivered")} & outcomes

            # The kubelet catches up a minute later with the same text: nothing changes, nothing is re-applied.
            config_file.write_text(render_config(demoted))
            time.sleep(1.5)
            assert _mode(service, "ich") == "silent"
        finally:
            service.stop()
            service.audit.close()
            service.spool.close()


def test_a_stale_mounted_file_never_undoes_a_demotion_seen_through_the_api(
        kube_cluster: ControlPlane, kube_namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The kubelet lags: the file may show an older version after the API delivered a newer one."""
    config = _config(tmp_path, kube_namespace, "http://127.0.0.1:9/alert", "assistive")
    cm_name = router_rc.config_map_name(ROUTER)
    config_file = tmp_path / "routing.yaml"
    config_file.write_text(render_config(config))
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.kubeconfig))
    with kube_cluster.api_client() as admin:
        core = client.CoreV1Api(admin)
        core.create_namespaced_config_map(kube_namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=cm_name), data={"routing.yaml": render_config(config)}))
        service = RouterService(config, config_path=str(config_file), config_poll_seconds=0.2)
        service.start()
        try:
            assert service.config_watcher is not None and service.config_watcher.connected.wait(30)
            versions = {mode: config.model_copy(update={"use_cases": [
                u.model_copy(update={"mode": mode}) if u.name == "ich" else u for u in config.use_cases]})
                for mode in ("triage", "silent")}
            for mode in ("triage", "silent"):  # promoted, then demoted again at once
                core.patch_namespaced_config_map(cm_name, kube_namespace,
                                                 {"data": {"routing.yaml": render_config(versions[mode])}})
                eventually(lambda m=mode: _mode(service, "ich") == m, f"{mode} seen through the API", timeout=10)
            config_file.write_text(render_config(versions["triage"]))  # the kubelet, one version behind
            time.sleep(1.0)
            assert _mode(service, "ich") == "silent"
            # Promoted again: the same text as two versions ago, which must still apply.
            core.patch_namespaced_config_map(cm_name, kube_namespace,
                                             {"data": {"routing.yaml": render_config(versions["triage"])}})
            eventually(lambda: _mode(service, "ich") == "triage", "re-promotion seen through the API", timeout=10)
            # A version only the file has (the API unreachable, say) still applies: the file is the fallback.
            fallback = config.model_copy(update={"use_cases": [u for u in config.use_cases if u.name == "pe"]})
            config_file.write_text(render_config(fallback))
            eventually(lambda: [u.name for u in service.config.use_cases] == ["pe"], "file-only version applied",
                       timeout=10)
        finally:
            service.stop()
            service.audit.close()
            service.spool.close()


def _create(api: client.ApiClient, namespace: str, manifest: dict[str, Any]) -> None:
    kind = manifest["kind"]
    if kind == "ServiceAccount":
        client.CoreV1Api(api).create_namespaced_service_account(namespace, manifest)
    elif kind == "Role":
        client.RbacAuthorizationV1Api(api).create_namespaced_role(namespace, manifest)
    else:
        client.RbacAuthorizationV1Api(api).create_namespaced_role_binding(namespace, manifest)


def test_an_invalid_configmap_keeps_the_running_config(
        kube_cluster: ControlPlane, kube_namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = _config(tmp_path, kube_namespace, "http://127.0.0.1:9/alert", "triage")
    cm_name = router_rc.config_map_name(ROUTER)
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.kubeconfig))
    with kube_cluster.api_client() as admin:
        core = client.CoreV1Api(admin)
        core.create_namespaced_config_map(kube_namespace, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=cm_name), data={"routing.yaml": render_config(config)}))
        service = RouterService(config)  # no mounted file at all: the API is the only source
        service.start()
        try:
            assert service.config_watcher is not None and service.config_watcher.connected.wait(30)
            for bad in ("useCases: [{name: ich, mode: sideways}]", "{not yaml", None):
                data = {"routing.yaml": bad} if bad is not None else {"routing.yaml": None, "other": "x"}
                core.patch_namespaced_config_map(cm_name, kube_namespace, {"data": data})
                time.sleep(0.5)
                assert _mode(service, "ich") == "triage" and service.config_watcher.connected.is_set()
            demoted = config.model_copy(update={"use_cases": [
                u.model_copy(update={"mode": "silent"}) for u in config.use_cases]})
            core.patch_namespaced_config_map(cm_name, kube_namespace,
                                             {"data": {"routing.yaml": render_config(demoted)}})
            eventually(lambda: _mode(service, "ich") == "silent", "a valid version after invalid ones", timeout=10)
        finally:
            service.stop()
            service.audit.close()
            service.spool.close()
