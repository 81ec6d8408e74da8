"""Least privilege in Kubernetes, on what would run: the chart rendered by the real ``helm`` (operator, API) and the
children the operator renders for a DicomRouter and a TritonCluster.

Every pod: non-root, read-only root filesystem, no privilege escalation, all capabilities dropped, seccomp
RuntimeDefault, no host namespaces. Secrets reach pods as mounted files only: no ``secretKeyRef``/``envFrom`` in env,
no literal env value that looks like a credential, no credential in a ConfigMap. NetworkPolicies select every pod
pacsflow runs and allow only the declared peers.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from pacsflow_operator.reconcile import router as router_rc
from pacsflow_operator.reconcile import triton as triton_rc
from pacsflow_operator.resources.v1alpha1 import AIUseCaseSpec, DicomRouterSpec, TritonClusterSpec
from tests.peers.cluster import helm_path

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "pacsflow"
EXAMPLES = REPO / "crds" / "examples"
FULL = ["--set", "api.enabled=true", "--set", "api.storeUrlSecret.name=pacsflow-results",
        "--set", "api.sessionSecret.name=pacsflow-api-session", "--set", "api.operatorKeySecret.name=op-key",
        "--set", "api.tls.secretName=pacsflow-api-tls", "--set-json", 'api.allowedNetworks=["10.20.0.0/16"]',
        "--set", "api.oidc.issuer=https://idp.hospital.example/realms/hospital", "--set", "api.oidc.clientId=page",
        "--set-json", 'api.oidc.roleGroups={"reader": ["PACS-Readers"]}', "--set", "api.oidc.clientSecret.name=oidc",
        "--set-json", 'networkPolicy.apiServerCidrs=["10.96.0.1/32"]']
CREDENTIAL = re.compile(r"(?i)(secret|password|passwd|token|api_?key|private)")
STORE_URL = re.compile(r"(?i)postgres(ql)?(\+\w+)?://[^/\s]*:[^@/\s]+@")  # a URL with a password in it


def _helm_template(args: list[str]) -> list[dict[str, Any]]:
    out = subprocess.run([str(helm_path()), "template", "pacsflow", str(CHART), "--namespace", "pacsflow-system",
                          "--kube-version", "1.34.0", *args], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _operator_children() -> list[dict[str, Any]]:
    spec = yaml.safe_load((EXAMPLES / "dicomrouter.yaml").read_text())["spec"]
    spec |= {"allowedNetworks": ["10.30.0.0/24"],
             "hl7Listener": {"port": 2575, "allowedNetworks": ["10.40.0.5/32"]},
             "webhooks": [{"name": "alerts", "url": "https://alerts.hospital.example:8443/hook",
                           "secretFile": "/etc/pacsflow-secrets/alerts/key"}],
             "secretMounts": [{"secretName": "alerts-hmac", "mountPath": "/etc/pacsflow-secrets/alerts"}]}
    spec["destinations"] = [{**spec["destinations"][0], "host": "10.50.0.9", "port": 104}]
    uc = AIUseCaseSpec.model_validate(yaml.safe_load((EXAMPLES / "aiusecase.yaml").read_text())["spec"])
    router = router_rc.render_router("ed", "radiology", DicomRouterSpec.model_validate(spec), {"ich": uc},
                                     image="router:1", triton_cluster_exists=True)
    triton = triton_rc.render_triton("gpu", TritonClusterSpec.model_validate(
        yaml.safe_load((EXAMPLES / "tritoncluster.yaml").read_text())["spec"]), {"ich": uc}, render_image="router:1")
    return router.children + triton.children


def _valid(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, "1.34.0", strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def _pods(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, str]]]:
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"], d["spec"]["template"]["metadata"]["labels"])
            for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def _check_pod(name: str, pod: dict[str, Any]) -> None:
    ctx = pod.get("securityContext", {})
    assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) != 0, name
    assert ctx.get("seccompProfile") == {"type": "RuntimeDefault"}, name
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), name
    for container in pod.get("initContainers", []) + pod["containers"]:
        where = f"{name}/{container['name']}"
        sc = container.get("securityContext", {})
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc["capabilities"].get("add"), where
        assert not sc.get("privileged") and sc.get("runAsUser", 1) != 0, where
        assert not container.get("envFrom"), f"{where}: envFrom puts a whole object into the environment"
        for env in container.get("env", []):
            assert "secretKeyRef" not in env.get("valueFrom", {}), f"{where}: {env['name']} is a Secret in env"
            value = str(env.get("value", ""))
            assert not STORE_URL.search(value), f"{where}: {env['name']} holds a credential"
            if CREDENTIAL.search(env["name"]) and not env["name"].endswith(("_FILE", "_DIR")):
                pytest.fail(f"{where}: {env['name']} looks like a credential in an env value")


def _selected(policies: list[dict[str, Any]], labels: dict[str, str]) -> list[dict[str, Any]]:
    return [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]


@pytest.mark.parametrize("args", [[], FULL], ids=["defaults", "api-sso-tls"])
def test_chart_pods_run_with_least_privilege_and_get_secrets_as_files(args):
    docs = _helm_template(args)
    _valid(docs)
    pods = _pods(docs)
    assert pods
    for name, pod, _ in pods:
        _check_pod(name, pod)
    for cm in (d for d in docs if d["kind"] == "ConfigMap"):
        for key, value in cm.get("data", {}).items():
            assert not CREDENTIAL.search(key) and not STORE_URL.search(value), f"ConfigMap {cm['metadata']['name']}"
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    for name, _, labels in pods:
        selected = _selected(policies, labels)
        assert selected, f"no NetworkPolicy selects {name}'s pods"
        assert all(set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"} for p in selected), name


def test_the_charts_network_policies_name_only_the_declared_peers():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _helm_template(FULL)}
    operator = docs["NetworkPolicy", "pacsflow-operator"]["spec"]
    # Out: DNS, the API server's CIDR on 443/6443, Triton's HTTP port (model readiness), the API's pods;
    # in: its metrics and health ports only.
    assert [sorted(p["port"] for p in r["ports"]) for r in operator["egress"]] == [[53, 53], [443, 6443], [8000], [8080]]
    assert operator["egress"][1]["to"] == [{"ipBlock": {"cidr": "10.96.0.1/32"}}]
    assert operator["egress"][2]["to"] == [{"namespaceSelector": {},
                                            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "pacsflow-triton"}}}]
    assert operator["egress"][3]["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "pacsflow-api"
    assert [sorted(p["port"] for p in r["ports"]) for r in operator["ingress"]] == [["health", "metrics"]]
    api = docs["NetworkPolicy", "pacsflow-api"]["spec"]
    http = api["ingress"][0]
    assert http["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert http["from"][0] == {"ipBlock": {"cidr": "10.20.0.0/16"}}  # api.allowedNetworks
    assert http["from"][1]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "pacsflow-operator"
    assert [sorted(p["port"] for p in r["ports"]) for r in api["egress"]] == [[53, 53], [5432], [443]]
    # The API pod: secrets in a projected volume, TLS from its Secret, no service account token.
    pod = docs["Deployment", "pacsflow-api"]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["PACSFLOW_API_SECRETS_DIR"] == "/etc/pacsflow-api/secrets"
    assert env["PACSFLOW_API_TLS_CERT_FILE"] == "/etc/pacsflow-api/tls/tls.crt"
    assert env["PACSFLOW_API_OIDC_CLIENT_SECRET_FILE"] == "/etc/pacsflow-api/secrets/oidc-client-secret"
    sources = {s["secret"]["name"]: s["secret"]["items"][0]["path"]
               for s in next(v for v in pod["volumes"] if v["name"] == "secrets")["projected"]["sources"]}
    assert sources == {"pacsflow-results": "PACSFLOW_STORE_URL", "pacsflow-api-session": "PACSFLOW_API_SESSION_SECRET",
                       "oidc": "oidc-client-secret"}


def test_operator_rendered_pods_and_the_routers_network_policy():
    children = _operator_children()
    _valid([c for c in children if c["kind"] in ("Deployment", "NetworkPolicy")])
    pods = _pods(children)
    assert {name for name, _, _ in pods} == {"ed-router", "gpu-triton"}
    for name, pod, _ in pods:
        _check_pod(name, pod)
    config = next(c for c in children if c["kind"] == "ConfigMap" and c["metadata"]["name"] == "ed-router-config")
    assert "/etc/pacsflow-secrets/alerts/key" in str(config["data"])  # the webhook's key: a file path, not the key
    policies = [c for c in children if c["kind"] == "NetworkPolicy"]
    [router] = _selected(policies, next(labels for name, _, labels in pods if name == "ed-router"))
    spec = router["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    dicom, metrics, hl7 = spec["ingress"]
    assert dicom == {"ports": [{"port": 11112, "protocol": "TCP"}], "from": [{"ipBlock": {"cidr": "10.30.0.0/24"}}]}
    assert metrics["ports"] == [{"port": 9108, "protocol": "TCP"}] and "from" not in metrics
    assert hl7 == {"ports": [{"port": 2575, "protocol": "TCP"}], "from": [{"ipBlock": {"cidr": "10.40.0.5/32"}}]}
    dns, api_server, triton, pacs, ris, webhook = spec["egress"]
    assert [p["port"] for p in dns["ports"]] == [53, 53] and [p["port"] for p in api_server["ports"]] == [443, 6443]
    assert triton["to"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "pacsflow-triton",
                                                             "app.kubernetes.io/instance": "gpu-triton"}}}]
    assert pacs == {"ports": [{"port": 104, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.50.0.9/32"}}]}
    assert ris == {"ports": [{"port": 2576, "protocol": "TCP"}]}  # a host name: its port, any address
    assert webhook == {"ports": [{"port": 8443, "protocol": "TCP"}]}
    # Triton: HTTP and gRPC from the namespace's routers only, HTTP (model readiness) from the operator's pods,
    # metrics to scrapers, nothing out but DNS.
    [triton_policy] = _selected(policies, next(labels for name, _, labels in pods if name == "gpu-triton"))
    served, operator, scraped = triton_policy["spec"]["ingress"]
    assert served["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "pacsflow-router"}}}]
    assert [p["port"] for p in served["ports"]] == [8000, 8001] and [p["port"] for p in scraped["ports"]] == [8002]
    assert operator == {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "pacsflow-operator", "app.kubernetes.io/component": "operator"}}}],
        "ports": [{"port": 8000, "protocol": "TCP"}]}
    assert "from" not in scraped
    assert [[p["port"] for p in r["ports"]] for r in triton_policy["spec"]["egress"]] == [[53, 53]]
