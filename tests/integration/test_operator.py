"""The operator on a real control plane: kube-apiserver + kube-controller-manager v1.34 and etcd.

The operator runs in-process with ``kopf.testing.KopfRunner`` against the API server of ``kube_cluster``;
the CRDs are the generated ones from ``crds/``, the resources the examples from ``crds/examples/``.
Nothing is mocked: the CEL rule is evaluated by the API server, cascading delete is done by the
garbage collector of kube-controller-manager.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client import REGISTRY

from pacsflow_router.config import parse_config
from tests.peers.cluster import ControlPlane
from tests.peers.net import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
GROUP, VERSION = "pacsflow.io", "v1alpha1"
PLURALS = {"DicomRouter": "dicomrouters", "TritonCluster": "tritonclusters", "AIUseCase": "aiusecases"}
ROUTER_CHILDREN = {
    "ConfigMap": "ed-router-router-config",
    "Service": "ed-router-router",
    "Deployment": "ed-router-router",
}
SPOOL_CLAIM = "ed-router-router-spool"  # retained: never owned, never garbage-collected


def example(kind: str) -> dict:
    name = {"DicomRouter": "dicomrouter", "TritonCluster": "tritoncluster", "AIUseCase": "aiusecase"}[kind]
    return yaml.safe_load((REPO / "crds" / "examples" / f"{name}.yaml").read_text())


class Cluster:
    """Test-side helpers over the admin client (the operator itself uses only its own kube.py)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.ns = namespace
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)

    def create(self, body: dict) -> dict:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURALS[body["kind"]], body)

    def get(self, kind: str, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, PLURALS[kind], name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_spec(self, kind: str, name: str, spec: dict) -> dict:
        return self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, PLURALS[kind], name, {"spec": spec})

    def delete(self, kind: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, PLURALS[kind], name)

    def child(self, kind: str, name: str):
        read = {
            "ConfigMap": self.core.read_namespaced_config_map,
            "Service": self.core.read_namespaced_service,
            "PersistentVolumeClaim": self.core.read_namespaced_persistent_volume_claim,
            "Deployment": self.apps.read_namespaced_deployment,
        }[kind]
        try:
            return read(name, self.ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def condition(self, kind: str, name: str, ctype: str) -> dict | None:
        obj = self.get(kind, name) or {}
        return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == ctype), None)

    def routing_config(self) -> str | None:
        cm = self.child("ConfigMap", ROUTER_CHILDREN["ConfigMap"])
        return cm.data["routing.yaml"] if cm else None

    def events(self, name: str) -> list:
        return [e for e in self.core.list_namespaced_event(self.ns).items if e.involved_object.name == name]


@pytest.fixture(scope="module")
def admin(kube_cluster: ControlPlane) -> Iterator[client.ApiClient]:
    with kube_cluster.api_client() as api:
        yield api


@pytest.fixture(scope="module")
def crds(admin: client.ApiClient) -> list[dict]:
    """The generated CRDs, applied (server-side) and Established."""
    ext = client.ApiextensionsV1Api(admin)
    docs = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml"))]
    for doc in docs:
        ext.patch_custom_resource_definition(
            doc["metadata"]["name"], doc, field_manager="pacsflow-tests", force=True,
            _content_type="application/apply-patch+yaml",
        )

    def established() -> bool:
        for doc in docs:
            crd = ext.read_custom_resource_definition(doc["metadata"]["name"])
            if not any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or ()):
                return False
        return True

    eventually(established, "CRDs Established")
    return docs


@pytest.fixture
def cluster(admin: client.ApiClient, kube_namespace: str, crds: list[dict]) -> Cluster:
    return Cluster(admin, kube_namespace)


@pytest.fixture
def run_operator(kube_cluster: ControlPlane, kube_namespace: str, admin: client.ApiClient,
                 monkeypatch: pytest.MonkeyPatch):
    """Start the operator (as ``kopf run -m pacsflow_operator.handlers``) on the test namespace."""
    monkeypatch.setenv("KUBECONFIG", str(kube_cluster.kubeconfig))
    monkeypatch.setenv("PACSFLOW_OPERATOR_METRICS_PORT", "0")
    monkeypatch.setenv("PACSFLOW_OPERATOR_ROUTER_IMAGE", "registry.example/pacsflow/router:test")
    runners = []

    def start() -> KopfRunner:
        runner = KopfRunner(
            ["run", "--standalone", "--namespace", kube_namespace, "-m", "pacsflow_operator.handlers"],
            timeout=60,
        )
        runner.__enter__()
        runners.append(runner)
        return runner

    def stop(runner: KopfRunner) -> None:
        runners.remove(runner)
        runner.__exit__(None, None, None)
        assert runner.exception is None, runner.output
        assert runner.exit_code == 0, runner.output

    start.stop = stop
    yield start
    if runners:
        # Delete the use cases while the operator still runs (their routers' configs drop them).
        custom = client.CustomObjectsApi(admin)
        custom.delete_collection_namespaced_custom_object(GROUP, VERSION, kube_namespace, "aiusecases")
        eventually(lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, kube_namespace,
                                                                    "aiusecases")["items"],
                   "use cases deleted before the operator stops")
    for runner in list(runners):
        stop(runner)


def _owned_by(obj, owner: dict) -> bool:
    refs = obj.metadata.owner_references or []
    return any(r.uid == owner["metadata"]["uid"] and r.kind == owner["kind"] and r.controller for r in refs)


def test_crds_serve_the_models_descriptions(cluster: Cluster, crds: list[dict], admin):
    ext = client.ApiextensionsV1Api(admin)
    crd = ext.read_custom_resource_definition("aiusecases.pacsflow.io")
    mode = crd.spec.versions[0].schema.open_apiv3_schema.properties["spec"].properties["mode"]
    assert "Promote one phase at a time" in mode.description
    assert mode.x_kubernetes_validations[0].rule.startswith("{'silent': 0")

    # What `kubectl explain aiusecases.spec.mode` prints comes from the API server's published OpenAPI v3
    # document for the group; read that document the way kubectl does (published a moment after Established).
    def published() -> dict | None:
        try:
            response = admin.call_api(*admin.param_serialize(
                "GET", "/openapi/v3/apis/pacsflow.io/v1alpha1", auth_settings=["BearerToken"]))
            if response.status != 200:
                return None
            doc = json.loads(response.read())
        except ApiException:
            return None
        schemas = doc.get("components", {}).get("schemas", {})
        return schemas.get("io.pacsflow.v1alpha1.AIUseCase")

    schema = eventually(published, "AIUseCase in the published OpenAPI v3")
    served_mode = schema["properties"]["spec"]["properties"]["mode"]
    assert "silent: results audited" in served_mode["description"]
    assert served_mode["enum"] == ["silent", "assistive", "triage"]


def test_examples_apply_and_children_appear_with_owners(cluster: Cluster, run_operator):
    run_operator()
    triton = cluster.create(example("TritonCluster"))
    router = cluster.create(example("DicomRouter"))
    cluster.create(example("AIUseCase"))
    pinned = example("AIUseCase")["spec"]["model"]["version"]

    text = eventually(lambda: "ich-head-ct" in (cluster.routing_config() or "") and cluster.routing_config(),
                      "routing ConfigMap with the use case")
    config = parse_config(yaml.safe_load(text), "ConfigMap")  # the router's own parser accepts it
    assert [(u.name, u.mode, u.model.version) for u in config.use_cases] == [("ich-head-ct", "silent", pinned)]
    assert config.inference.url == f"gpu-triton-triton.{cluster.ns}.svc:8000"

    for kind, name in ROUTER_CHILDREN.items():
        obj = eventually(lambda k=kind, n=name: cluster.child(k, n), f"{kind} {name}")
        assert _owned_by(obj, router), f"{kind} {name} not owned by the DicomRouter"
    spool = eventually(lambda: cluster.child("PersistentVolumeClaim", SPOOL_CLAIM), "spool claim")
    assert not spool.metadata.owner_references, "the spool outlives its router: it holds acknowledged instances"
    dep = cluster.child("Deployment", "ed-router-router")
    assert dep.spec.replicas == 1 and dep.spec.strategy.type == "Recreate"
    assert dep.spec.template.spec.containers[0].image == "registry.example/pacsflow/router:test"

    tdep = eventually(lambda: cluster.child("Deployment", "gpu-triton-triton"), "Triton Deployment")
    assert _owned_by(tdep, triton)
    assert tdep.spec.template.spec.containers[0].resources.limits == {"nvidia.com/gpu": "1"}
    assert tdep.spec.template.spec.init_containers[0].args[-2:] == ["--versions", f"ich_detector:{pinned}"]
    assert _owned_by(cluster.child("Service", "gpu-triton-triton"), triton)

    ready = eventually(lambda: (c := cluster.condition("AIUseCase", "ich-head-ct", "Ready")) and
                       c["status"] == "True" and c, "AIUseCase Ready")
    assert ready["observedGeneration"] == 1
    uc = cluster.get("AIUseCase", "ich-head-ct")
    assert uc["status"]["modeHistory"][0]["mode"] == "silent"
    # No Triton runs here, so nothing has said the version is READY: ModelAvailable must not claim it.
    assert {c["type"]: c["status"] for c in uc["status"]["conditions"]}["ModelAvailable"] == "Unknown"
    eventually(lambda: (cluster.get("DicomRouter", "ed-router").get("status") or {}).get("useCases") == 1,
               "DicomRouter status.useCases")
    eventually(lambda: (cluster.get("TritonCluster", "gpu-triton").get("status") or {}).get("models")
               == [{"name": "ich_detector", "versions": [pinned]}], "TritonCluster status.models")
    # The operator counted what it did (in-process registry: the runner shares this process).
    for kind in ("DicomRouter", "TritonCluster"):
        assert REGISTRY.get_sample_value("pacsflow_operator_reconciliations_total",
                                         {"kind": kind, "outcome": "success"}) > 0
    assert REGISTRY.get_sample_value("pacsflow_operator_reconcile_duration_seconds_count", {"kind": "DicomRouter"}) > 0
    assert REGISTRY.get_sample_value("pacsflow_operator_api_requests_total", {"verb": "apply"}) > 0
    # kopf's bookkeeping uses pacsflow names (on the router: kopf writes its annotations after the create handler
    # returns, which may be after another handler already wrote Ready); a use case's lives in the operator's
    # memory (handlers.bookkeeping: no PATCH per handled change), and it carries no finalizer (the router carries
    # kopf's, for its timers).
    router = eventually(lambda: (r := cluster.get("DicomRouter", "ed-router")) and r["metadata"].get("annotations")
                        and r, "kopf's bookkeeping annotations on the router")
    assert any(k.startswith("pacsflow.io/") for k in router["metadata"]["annotations"])
    uc = cluster.get("AIUseCase", "ich-head-ct")
    assert not uc["metadata"].get("finalizers")
    assert router["metadata"]["finalizers"] == ["pacsflow.io/finalizer"]
    assert not any(k.startswith("kopf.zalando.org") for k in router["metadata"]["annotations"])
    assert not any(k.startswith(("kopf.zalando.org", "pacsflow.io/")) for k in uc["metadata"].get("annotations") or {})


def test_mode_rollout_is_enforced_by_the_api_server(cluster: Cluster, run_operator):
    run_operator()
    cluster.create(example("DicomRouter"))
    cluster.create(example("AIUseCase"))
    eventually(lambda: "mode: silent" in (cluster.routing_config() or ""), "silent use case rendered")

    with pytest.raises(ApiException) as refused:
        cluster.patch_spec("AIUseCase", "ich-head-ct", {"mode": "triage"})
    assert refused.value.status == 422
    assert "cannot go from silent to triage" in refused.value.body
    assert "one phase at a time" in refused.value.body
    assert cluster.get("AIUseCase", "ich-head-ct")["spec"]["mode"] == "silent"

    for mode in ("assistive", "triage", "silent"):
        cluster.patch_spec("AIUseCase", "ich-head-ct", {"mode": mode})
        eventually(lambda m=mode: f"mode: {m}" in (cluster.routing_config() or ""), f"ConfigMap re-rendered ({mode})")
    history = eventually(
        lambda: (h := cluster.get("AIUseCase", "ich-head-ct")["status"].get("modeHistory")) and len(h) == 4 and h,
        "four modes in status.modeHistory")
    assert [h["mode"] for h in history] == ["silent", "assistive", "triage", "silent"]
    assert all(h["since"] for h in history)
    eventually(lambda: any(e.reason == "ModeChanged" for e in cluster.events("ich-head-ct")), "ModeChanged Event")


def test_router_replicas_above_one_are_refused_with_the_reason(cluster: Cluster):
    body = copy.deepcopy(example("DicomRouter"))
    body["spec"]["replicas"] = 2
    with pytest.raises(ApiException) as refused:
        cluster.create(body)
    assert refused.value.status == 422
    assert "each see part of a study" in refused.value.body


def test_missing_router_is_a_condition_then_resolves(cluster: Cluster, run_operator):
    run_operator()
    cluster.create(example("AIUseCase"))
    missing = eventually(lambda: (c := cluster.condition("AIUseCase", "ich-head-ct", "Ready")) and c,
                         "Ready condition on an orphan use case")
    assert (missing["status"], missing["reason"]) == ("False", "RouterNotFound")
    assert "DicomRouter 'ed-router' does not exist" in missing["message"]
    eventually(lambda: any(e.reason == "RouterNotFound" and e.type == "Warning"
                           for e in cluster.events("ich-head-ct")), "RouterNotFound Warning Event")

    router = example("DicomRouter")
    router["spec"].pop("tritonCluster")
    cluster.create(router)
    eventually(lambda: (c := cluster.condition("AIUseCase", "ich-head-ct", "Ready")) and c["status"] == "True",
               "use case Ready once its router exists")
    assert "ich-head-ct" in cluster.routing_config()


def test_missing_triton_cluster_is_a_condition(cluster: Cluster, run_operator):
    run_operator()
    cluster.create(example("DicomRouter"))
    cond = eventually(lambda: cluster.condition("DicomRouter", "ed-router", "TritonClusterFound"),
                      "TritonClusterFound condition")
    assert (cond["status"], cond["reason"]) == ("False", "TritonClusterNotFound")
    cluster.create(example("TritonCluster"))
    eventually(lambda: (c := cluster.condition("DicomRouter", "ed-router", "TritonClusterFound"))
               and c["status"] == "True", "TritonClusterFound once the cluster exists")


def test_delete_cascades_and_deleted_use_case_leaves_the_config(cluster: Cluster, run_operator):
    first = run_operator()
    cluster.create(example("DicomRouter"))
    cluster.create(example("AIUseCase"))
    other = copy.deepcopy(example("AIUseCase"))
    other["metadata"]["name"] = "ich-head-ct-b"
    cluster.create(other)
    eventually(lambda: "name: ich-head-ct-b\n" in (cluster.routing_config() or ""), "use cases rendered")

    cluster.delete("AIUseCase", "ich-head-ct")
    eventually(lambda: cluster.get("AIUseCase", "ich-head-ct") is None, "use case deleted")
    eventually(lambda: "name: ich-head-ct\n" not in cluster.routing_config(), "deleted use case left the config")
    assert "name: ich-head-ct-b\n" in cluster.routing_config()
    # Deleted while no operator runs (nothing blocks it): the next operator's render at start-up leaves it out.
    run_operator.stop(first)
    cluster.delete("AIUseCase", "ich-head-ct-b")
    eventually(lambda: cluster.get("AIUseCase", "ich-head-ct-b") is None, "use case deleted with no operator")
    run_operator()
    eventually(lambda: "useCases: []" in cluster.routing_config(), "use case deleted while down left the config")

    cluster.delete("DicomRouter", "ed-router")
    for kind, name in ROUTER_CHILDREN.items():
        eventually(lambda k=kind, n=name: cluster.child(k, n) is None, f"{kind} {name} garbage-collected",
                   timeout=90)
    assert cluster.child("PersistentVolumeClaim", SPOOL_CLAIM) is not None, "acknowledged instances are kept"


def test_operator_restart_creates_no_duplicates(cluster: Cluster, run_operator):
    first = run_operator()
    cluster.create(example("TritonCluster"))
    cluster.create(example("DicomRouter"))
    cluster.create(example("AIUseCase"))
    eventually(lambda: cluster.condition("AIUseCase", "ich-head-ct", "Ready"), "first reconcile")
    eventually(lambda: cluster.child("Deployment", "gpu-triton-triton"), "Triton Deployment")
    unchanged = ("Deployment", "Service", "PersistentVolumeClaim")

    def our_writes() -> dict:
        # What the operator last changed: its server-side-apply managedFields entry (set only when an apply
        # changes something) and the Deployment's generation (bumped by any spec change). resourceVersion
        # is no use here: kube-controller-manager keeps writing the Deployment's status.
        out = {}
        for kind in unchanged:
            obj = cluster.child(kind, {**ROUTER_CHILDREN, "PersistentVolumeClaim": SPOOL_CLAIM}[kind])
            ours = [(m.operation, m.time, json.dumps(m.fields_v1, sort_keys=True))
                    for m in obj.metadata.managed_fields if m.manager == "pacsflow-operator"]
            out[kind] = (ours, obj.metadata.generation)
        return out

    before = our_writes()
    assert all(ours for ours, _ in before.values())
    run_operator.stop(first)
    # A change made while the operator is down is picked up by the next one (resume/update handlers).
    cluster.patch_spec("AIUseCase", "ich-head-ct", {"mode": "assistive"})

    second = run_operator()
    eventually(lambda: "mode: assistive" in (cluster.routing_config() or ""), "edit made while down rendered")
    eventually(lambda: [h["mode"] for h in cluster.get("AIUseCase", "ich-head-ct")["status"]["modeHistory"]]
               == ["silent", "assistive"], "mode history continued across the restart")
    run_operator.stop(second)
    selector = "app.kubernetes.io/part-of=pacsflow"
    names = {
        "ConfigMap": [c.metadata.name for c in cluster.core.list_namespaced_config_map(
            cluster.ns, label_selector=selector).items],
        "Deployment": sorted(d.metadata.name for d in cluster.apps.list_namespaced_deployment(
            cluster.ns, label_selector=selector).items),
        "Service": sorted(s.metadata.name for s in cluster.core.list_namespaced_service(
            cluster.ns, label_selector=selector).items),
        "PersistentVolumeClaim": [p.metadata.name for p in cluster.core.list_namespaced_persistent_volume_claim(
            cluster.ns, label_selector=selector).items],
    }
    assert names == {
        "ConfigMap": ["ed-router-router-config"],
        "Deployment": ["ed-router-router", "gpu-triton-triton"],
        "Service": ["ed-router-router", "gpu-triton-triton"],
        "PersistentVolumeClaim": ["ed-router-router-spool"],
    }
    # Server-side apply of identical manifests is a no-op: the restart rewrote nothing but the config.
    assert our_writes() == before


def test_use_case_with_unknown_destination_is_left_out_until_the_router_defines_it(cluster: Cluster, run_operator):
    run_operator()
    router = example("DicomRouter")
    router["spec"].pop("tritonCluster")
    router["spec"]["destinations"] = []
    cluster.create(router)
    cluster.create(example("AIUseCase"))
    cond = eventually(lambda: (c := cluster.condition("AIUseCase", "ich-head-ct", "ConfigRendered")) and c,
                      "ConfigRendered condition")
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")
    assert "unknown destination 'pacs'" in cond["message"]
    assert "ich-head-ct" not in cluster.routing_config()

    cluster.patch_spec("DicomRouter", "ed-router", {"destinations": example("DicomRouter")["spec"]["destinations"]})
    eventually(lambda: "ich-head-ct" in (cluster.routing_config() or ""), "use case rendered once the router has it")
    eventually(lambda: (c := cluster.condition("AIUseCase", "ich-head-ct", "Ready")) and c["status"] == "True",
               "use case Ready after the router changed")
