"""The Helm chart: lint, values schema, offline validation for Kubernetes 1.34, install on a real API server.

``helm`` is the real binary (built once by ``scripts/cluster.sh helm`` into the cache outside the repo);
``helm template`` output is validated with kubernetes-validate's 1.34 schemas (strict: unknown fields fail).
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.peers.cluster import ControlPlane, helm_path
from tests.peers.net import eventually

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "pacsflow"
K8S = "1.34.0"
VARIANTS = {
    "defaults": [],
    "namespaced": ["--set", "operator.watchNamespaces={radiology,research}"],
    "no-crds-existing-sa": ["--set", "crds.install=false", "--set", "serviceAccount.create=false",
                            "--set", "serviceAccount.name=pacsflow", "--set", "metrics.service=false"],
    "api": ["--set", "api.enabled=true", "--set", "api.storeUrlSecret.name=pacsflow-results",
            "--set", "api.sessionSecret.name=pacsflow-api-session", "--set", "api.replicas=2",
            "--set", "api.operatorKeySecret.name=pacsflow-operator-key", "--set-json", 'api.ppvFloors={"ich-head-ct": 0.3}'],
}


@pytest.fixture(scope="module")
def helm() -> str:
    return str(helm_path())


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)


def _template(helm: str, args: list[str]) -> list[dict]:
    out = _run([helm, "template", "pacsflow", str(CHART), "--namespace", "pacsflow-system", "--kube-version", K8S, *args])
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint(helm: str, variant: str):
    out = _run([helm, "lint", "--strict", str(CHART), *VARIANTS[variant]])
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_template_is_valid_kubernetes(helm: str, variant: str):
    docs = _template(helm, VARIANTS[variant])
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ClusterRole", "ClusterRoleBinding"} <= kinds
    assert ("CustomResourceDefinition" in kinds) == ("crds.install=false" not in VARIANTS[variant])


def test_chart_crds_are_the_generated_ones_and_kept(helm: str):
    docs = {d["metadata"]["name"]: d for d in _template(helm, []) if d["kind"] == "CustomResourceDefinition"}
    for path in sorted((REPO / "crds").glob("*.yaml")):
        generated = yaml.safe_load(path.read_text())
        chart = docs[generated["metadata"]["name"]]
        assert chart["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert chart["spec"] == generated["spec"]


def test_namespaced_install_binds_only_the_watched_namespaces(helm: str):
    docs = _template(helm, VARIANTS["namespaced"])
    bindings = [(d["kind"], d["metadata"].get("namespace"), d["roleRef"]["name"]) for d in docs
                if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert ("RoleBinding", "radiology", "pacsflow-manager") in bindings
    assert ("RoleBinding", "research", "pacsflow-manager") in bindings
    assert not any(k == "ClusterRoleBinding" and r == "pacsflow-manager" for k, _, r in bindings)
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert {"--namespace=radiology", "--namespace=research"} <= set(dep["spec"]["template"]["spec"]
                                                                   ["containers"][0]["args"])


def test_the_api_is_its_own_deployment_reading_the_store_url_from_a_secret(helm: str):
    assert not [d for d in _template(helm, []) if d["metadata"]["name"].endswith("-api")]  # off by default
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _template(helm, VARIANTS["api"])}
    pod = docs["Deployment", "pacsflow-api"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["pacsflow-api"] and pod["automountServiceAccountToken"] is False
    env = {e["name"]: e for e in container["env"]}
    # Secrets as files named after their variable (tests/integration/test_least_privilege.py checks no env has one).
    assert env["PACSFLOW_API_SECRETS_DIR"]["value"] == "/etc/pacsflow-api/secrets"
    projected = next(v for v in pod["volumes"] if v["name"] == "secrets")["projected"]["sources"]
    assert {"name": "pacsflow-results", "items": [{"key": "url", "path": "PACSFLOW_STORE_URL"}]} in [
        p["secret"] for p in projected]
    assert {"name": "pacsflow-api-session", "items": [{"key": "key", "path": "PACSFLOW_API_SESSION_SECRET"}]} in [
        p["secret"] for p in projected]
    assert docs["Service", "pacsflow-api"]["spec"]["ports"][0]["targetPort"] == "http"
    # The evidence: gauges on the API's metrics port with the PPV floors; the operator reads status.evidence from it.
    assert env["PACSFLOW_API_METRICS_PORT"]["value"] == "9109"
    assert json.loads(env["PACSFLOW_API_PPV_FLOORS"]["value"]) == {"ich-head-ct": 0.3}
    operator = {e["name"]: e for e in docs["Deployment", "pacsflow"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert operator["PACSFLOW_OPERATOR_EVIDENCE_URL"]["value"] == "http://pacsflow-api.pacsflow-system.svc"
    assert operator["PACSFLOW_OPERATOR_SECRETS_DIR"]["value"] == "/etc/pacsflow-operator/secrets"
    assert docs["Deployment", "pacsflow"]["spec"]["template"]["spec"]["volumes"][0]["secret"] == {
        "secretName": "pacsflow-operator-key", "defaultMode": 0o440,
        "items": [{"key": "token", "path": "PACSFLOW_OPERATOR_EVIDENCE_API_KEY"}]}
    assert "PACSFLOW_OPERATOR_EVIDENCE_URL" not in {
        e["name"] for d in _template(helm, []) if d["kind"] == "Deployment"
        for e in d["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    missing = _run([helm, "template", "x", str(CHART), "--kube-version", K8S, "--set", "api.enabled=true"])
    assert missing.returncode != 0 and "api.storeUrlSecret.name is required" in missing.stderr


def test_the_operator_pod_is_what_the_triton_network_policies_admit(helm: str):
    """The TritonClusters' policies (operator reconcile/triton.py) admit the operator's pods by the labels and the
    namespace the chart gives them, and the operator's own policy lets its readiness request out to Triton."""
    from pacsflow_operator.reconcile import triton as triton_rc

    docs = {(d["kind"], d["metadata"]["name"]): d for d in _template(helm, [])}
    template = docs["Deployment", "pacsflow"]["spec"]["template"]
    assert triton_rc.OPERATOR_POD_LABELS.items() <= template["metadata"]["labels"].items()
    env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
    assert env["PACSFLOW_OPERATOR_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    egress = docs["NetworkPolicy", "pacsflow-operator"]["spec"]["egress"]
    assert {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {
        "app.kubernetes.io/name": triton_rc.labels("x")["app.kubernetes.io/name"]}}}],
        "ports": [{"port": triton_rc.HTTP_PORT, "protocol": "TCP"}]} in egress


def test_rbac_is_least_privilege(helm: str):
    for doc in _template(helm, []):
        if doc["kind"] != "ClusterRole":
            continue
        for rule in doc["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
            assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
            assert "secrets" not in rule["resources"], rule


def test_values_schema_rejects_unknown_and_bad_values(helm: str):
    typo = _run([helm, "template", "x", str(CHART), "--kube-version", K8S, "--set", "operator.logLevl=DEBUG"])
    assert typo.returncode != 0 and "logLevl" in typo.stderr
    bad = _run([helm, "template", "x", str(CHART), "--kube-version", K8S, "--set", "operator.metricsPort=0"])
    assert bad.returncode != 0 and "metricsPort" in bad.stderr


def _schema_paths(schema: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for key, sub in schema.get("properties", {}).items():
        paths.append((*prefix, key))
        if "$ref" not in sub and sub.get("type") == "object" and "properties" in sub:
            paths += _schema_paths(sub, (*prefix, key))
    return paths


def test_every_value_is_commented():
    lines = (CHART / "values.yaml").read_text().splitlines()
    schema = json.loads((CHART / "values.schema.json").read_text())
    found: dict[tuple[str, ...], int] = {}
    stack: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        found[tuple(k for _, k in stack)] = i
    for path in _schema_paths(schema) + [("operator", "image", "repository"), ("router", "image", "tag")]:
        assert path in found, f"{'.'.join(path)} missing from values.yaml"
        i = found[path]
        is_section = any(p[: len(path)] == path and p != path for p in found)
        assert is_section or lines[i - 1].lstrip().startswith("#"), f"{'.'.join(path)} has no comment"


@pytest.mark.cluster
def test_helm_install_and_uninstall_on_the_api_server(helm: str, kube_cluster: ControlPlane, kube_namespace: str):
    release = f"pf-{uuid.uuid4().hex[:6]}"
    env = kube_cluster.env()
    # --take-ownership: the operator tests in this session may have applied the same CRDs already.
    install = _run([helm, "install", release, str(CHART), "--namespace", kube_namespace, "--take-ownership",
                    "--set", f"operator.watchNamespaces={{{kube_namespace}}}"], env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    with kube_cluster.api_client() as api:
        apps, core, ext = client.AppsV1Api(api), client.CoreV1Api(api), client.ApiextensionsV1Api(api)
        dep = apps.read_namespaced_deployment(f"{release}-pacsflow", kube_namespace)
        assert dep.spec.template.spec.service_account_name == f"{release}-pacsflow"
        core.read_namespaced_service_account(f"{release}-pacsflow", kube_namespace)
        crd = ext.read_custom_resource_definition("aiusecases.pacsflow.io")
        assert crd.metadata.annotations["meta.helm.sh/release-name"] == release

        uninstall = _run([helm, "uninstall", release, "--namespace", kube_namespace], env=env)
        assert uninstall.returncode == 0, uninstall.stderr
        # resource-policy keep: uninstalling never deletes the CRDs (and with them every use case).
        ext.read_custom_resource_definition("aiusecases.pacsflow.io")
        with pytest.raises(ApiException) as gone:
            apps.read_namespaced_deployment(f"{release}-pacsflow", kube_namespace)
        assert gone.value.status == 404


@pytest.mark.cluster
def test_operator_works_with_only_the_charts_rbac(helm: str, kube_cluster: ControlPlane, kube_namespace: str,
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Least privilege that is enough: the operator runs as the chart's ServiceAccount (a real token from
    the API server) and still creates children, writes status, posts Events and releases finalizers."""
    from kopf.testing import KopfRunner  # the operator's runner; only this test needs it

    release = f"pf-{uuid.uuid4().hex[:6]}"
    env = kube_cluster.env()
    install = _run([helm, "install", release, str(CHART), "--namespace", kube_namespace, "--take-ownership",
                    "--set", f"operator.watchNamespaces={{{kube_namespace}}}"], env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    sa = f"{release}-pacsflow"
    try:
        with kube_cluster.api_client() as api:
            core, custom, apps = client.CoreV1Api(api), client.CustomObjectsApi(api), client.AppsV1Api(api)
            token = core.create_namespaced_service_account_token(
                sa, kube_namespace, client.AuthenticationV1TokenRequest(
                    spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))).status.token
            kubeconfig = tmp_path / "operator-sa.kubeconfig"
            kubeconfig.write_text(yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "sa",
                "clusters": [{"name": "c", "cluster": {"server": kube_cluster.server_url,
                                                        "certificate-authority": str(kube_cluster.pki.ca_crt)}}],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": kube_namespace}}],
            }))
            monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
            monkeypatch.setenv("PACSFLOW_OPERATOR_METRICS_PORT", "0")
            examples = {p.stem: yaml.safe_load(p.read_text()) for p in (REPO / "crds" / "examples").glob("*.yaml")}
            with KopfRunner(["run", "--standalone", "--namespace", kube_namespace, "-m",
                             "pacsflow_operator.handlers"], timeout=60) as runner:
                for kind in ("tritoncluster", "dicomrouter", "aiusecase"):
                    custom.create_namespaced_custom_object("pacsflow.io", "v1alpha1", kube_namespace, f"{kind}s",
                                                           examples[kind])

                def ready() -> bool:
                    uc = custom.get_namespaced_custom_object("pacsflow.io", "v1alpha1", kube_namespace,
                                                             "aiusecases", "ich-head-ct")
                    conds = {c["type"]: c["status"] for c in (uc.get("status") or {}).get("conditions", [])}
                    return conds.get("Ready") == "True"

                eventually(ready, "use case Ready under the chart's RBAC")
                dep = apps.read_namespaced_deployment("ed-router-router", kube_namespace)
                assert dep.metadata.owner_references[0].kind == "DicomRouter"
                apps.read_namespaced_deployment("gpu-triton-triton", kube_namespace)
                custom.delete_namespaced_custom_object("pacsflow.io", "v1alpha1", kube_namespace, "aiusecases",
                                                       "ich-head-ct")

                def deleted() -> bool:
                    try:
                        custom.get_namespaced_custom_object("pacsflow.io", "v1alpha1", kube_namespace,
                                                            "aiusecases", "ich-head-ct")
                    except ApiException as exc:
                        return exc.status == 404
                    return False

                eventually(deleted, "finalizer released by the operator")
            assert runner.exception is None, runner.output
            # Not a bare "403": log timestamps such as "02:29:56,403" contain it.
            assert "forbidden" not in runner.output.lower(), runner.output
    finally:
        _run([helm, "uninstall", release, "--namespace", kube_namespace], env=env)
