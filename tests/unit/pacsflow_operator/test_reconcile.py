"""Pure reconciliation: children of routers and Triton clusters, use-case status; the config contract."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pacsflow_operator.reconcile import router as router_rc
from pacsflow_operator.reconcile import triton as triton_rc
from pacsflow_operator.reconcile.usecase import Binding, use_case_status
from pacsflow_operator.resources.v1alpha1 import AIUseCaseSpec, DicomRouterSpec, TritonClusterSpec
from pacsflow_router.config import parse_config

EXAMPLES = Path(__file__).resolve().parents[3] / "crds" / "examples"


def _example(kind_file: str) -> dict:
    return yaml.safe_load((EXAMPLES / kind_file).read_text())["spec"]


ROUTER = DicomRouterSpec.model_validate(_example("dicomrouter.yaml"))
TRITON = TritonClusterSpec.model_validate(_example("tritoncluster.yaml"))
UC = AIUseCaseSpec.model_validate(_example("aiusecase.yaml"))
#: The version the example pins (the model team moves it when a better version lands).
PINNED = UC.model.version


def _uc(**changes) -> AIUseCaseSpec:
    return AIUseCaseSpec.model_validate({**UC.model_dump(), **changes})


def _by_kind(children):
    return {c["kind"]: c for c in children}


def test_configmap_is_a_valid_routing_config_for_the_router():
    """Contract: what the operator writes is what pacsflow_router.config accepts."""
    plan = router_rc.render_router("ed-router", "radiology", ROUTER, {"ich-head-ct": UC}, image="img:1",
                                   triton_cluster_exists=True)
    cm = _by_kind(plan.children)["ConfigMap"]
    assert cm["metadata"]["name"] == "ed-router-router-config"
    config = parse_config(yaml.safe_load(cm["data"][router_rc.CONFIG_KEY]), "configmap")
    assert config.ae_title == "PACSFLOW"
    assert config.allowed_calling_ae_titles == ["PACS", "CT_ED_1"]
    assert config.bind_address == "0.0.0.0" and config.metrics.host == "0.0.0.0"
    assert config.inference.backend == "triton"
    assert config.inference.url == "gpu-triton-triton.radiology.svc:8000"
    # The router preprocesses with the manifests Triton serves, mirrored on its spool volume; those in its image are
    # the fallback (a relative default would miss them in the pod).
    assert config.inference.model_repository == router_rc.EMBEDDED_MODEL_REPOSITORY
    assert config.inference.manifest_mirror == "/var/lib/pacsflow/manifests"
    [uc] = config.use_cases
    assert (uc.name, uc.mode, uc.model.name, uc.model.version) == ("ich-head-ct", "silent", "ich_detector", PINNED)
    assert uc.match.series_description_pattern == "(?i)non.?con"
    assert uc.outputs.structured_report.destination == "pacs"


def test_mode_edit_changes_only_the_configmap():
    before = _by_kind(router_rc.render_router("r", "ns", ROUTER, {"a": UC}, image="img").children)
    after = _by_kind(router_rc.render_router("r", "ns", ROUTER, {"a": _uc(mode="assistive")}, image="img").children)
    assert before["ConfigMap"] != after["ConfigMap"]
    assert "mode: assistive" in after["ConfigMap"]["data"]["routing.yaml"]
    # Hot reload, not a restart: the pod template must not change with the routing config.
    for kind in ("Deployment", "Service", "PersistentVolumeClaim"):
        assert before[kind] == after[kind], kind


def test_use_cases_are_rendered_in_name_order():
    plan = router_rc.render_router("r", "ns", ROUTER, {"zz": UC, "aa": UC, "mm": UC}, image="img")
    assert [u.name for u in plan.config.use_cases] == ["aa", "mm", "zz"]


def test_one_bad_use_case_does_not_take_the_others_down():
    bad = _uc(outputs={"structured_report": {"destination": "nowhere"}})
    plan = router_rc.render_router("r", "ns", ROUTER, {"good": UC, "bad": bad}, image="img")
    assert plan.accepted == ("good",)
    assert "unknown destination 'nowhere'" in plan.rejected["bad"]
    rendered = {c.type: c for c in plan.conditions}["ConfigRendered"]
    assert rendered.reason == "SomeUseCasesInvalid" and "bad" in rendered.message


def test_use_case_name_must_be_a_dns_label_for_the_router():
    plan = router_rc.render_router("r", "ns", ROUTER, {"ich.v2": UC}, image="img")
    assert plan.accepted == () and "ich.v2" in plan.rejected


def test_router_deployment():
    dep = _by_kind(router_rc.render_router("ed", "ns", ROUTER, {}, image="default:1").children)["Deployment"]
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    [c] = pod["containers"]
    assert c["image"] == "default:1"
    assert c["args"] == ["--config", "/etc/pacsflow/routing.yaml"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"dicom": 11112, "metrics": 9108, "mllp": 2575,
                                                                   "hl7-http": 8081}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/pacsflow-secrets/sectra"]["readOnly"] is True
    secret_volume = {v["name"]: v for v in pod["volumes"]}[mounts["/etc/pacsflow-secrets/sectra"]["name"]]
    assert secret_volume["secret"]["secretName"] == "sectra-webhook-hmac"
    # Startup and readiness on /readyz (DICOM listener accepting, spool writable), liveness on /healthz.
    ready = {"path": "/readyz", "port": "metrics", "scheme": "HTTP"}
    assert c["readinessProbe"]["httpGet"] == ready and c["startupProbe"]["httpGet"] == ready
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert all("subPath" not in m for m in c["volumeMounts"])  # subPath mounts never see ConfigMap updates
    assert {v["name"]: v for v in pod["volumes"]}["spool"]["persistentVolumeClaim"]["claimName"] == "ed-router-spool"
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    own = _by_kind(router_rc.render_router("ed", "ns", ROUTER.model_copy(update={"image": "mine:2"}), {},
                                           image="default:1").children)["Deployment"]
    assert own["spec"]["template"]["spec"]["containers"][0]["image"] == "mine:2"


def test_router_pvc_and_service():
    children = _by_kind(router_rc.render_router("ed", "ns", ROUTER, {}, image="img").children)
    assert children["PersistentVolumeClaim"]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert router_rc.RETAIN_ANNOTATION in children["PersistentVolumeClaim"]["metadata"]["annotations"]
    ports = {p["name"]: p["port"] for p in children["Service"]["spec"]["ports"]}
    assert ports == {"dicom": 11112, "metrics": 9108, "mllp": 2575, "hl7-http": 8081}


def test_spool_settings_reach_the_routing_config():
    # Defaults: the router's own (a file per instance, refuse above 95 %); set, they travel to the ConfigMap.
    config = router_rc.render_router("ed", "ns", ROUTER, {}, image="img").config
    assert (config.spool_max_disk_usage, config.spool_write_ahead) == (0.95, False)
    spec = DicomRouterSpec.model_validate({**_example("dicomrouter.yaml"),
                                           "spool": {"size": "20Gi", "maxDiskUsage": 0.8, "writeAhead": True}})
    cm = _by_kind(router_rc.render_router("ed", "ns", spec, {}, image="img").children)["ConfigMap"]
    config = parse_config(yaml.safe_load(cm["data"][router_rc.CONFIG_KEY]), "configmap")
    assert (config.spool_max_disk_usage, config.spool_write_ahead) == (0.8, True)
    with pytest.raises(ValueError, match="maxDiskUsage"):
        DicomRouterSpec.model_validate({**_example("dicomrouter.yaml"), "spool": {"maxDiskUsage": 1.5}})


def test_router_workflow_settings_reach_the_routing_config():
    plan = router_rc.render_router("ed", "ns", ROUTER, {"ich-head-ct": UC}, image="img")
    config = plan.config
    assert config.hl7_listener is not None and config.hl7_listener.bind_address == "0.0.0.0"  # reachable in a pod
    assert config.hl7_destination("ris").version == "2.3.1"
    assert config.webhook("sectra-wo").secret_file == "/etc/pacsflow-secrets/sectra/hmac-key"
    assert config.completion.window("MR") == 120
    [uc] = config.use_cases
    assert uc.outputs.hl7 is not None and uc.outputs.webhooks == ["sectra-wo"]


def test_secret_mounts_may_not_shadow_the_spool_or_config():
    for path in ("/var/lib/pacsflow", "/etc/pacsflow/x", "relative/path"):
        with pytest.raises(ValueError):
            DicomRouterSpec.model_validate({**_example("dicomrouter.yaml"),
                                            "secretMounts": [{"secretName": "s", "mountPath": path}]})


def test_embedded_inference_without_triton_cluster():
    spec = ROUTER.model_copy(update={"triton_cluster": None})
    plan = router_rc.render_router("r", "ns", spec, {}, image="img")
    assert plan.config.inference.backend == "embedded"
    assert "TritonClusterFound" not in {c.type for c in plan.conditions}


def test_missing_triton_cluster_is_a_condition():
    plan = router_rc.render_router("r", "ns", ROUTER, {}, image="img", triton_cluster_exists=False)
    conds = {c.type: c for c in plan.conditions}
    assert conds["Ready"].status == "False" and conds["Ready"].reason == "TritonClusterNotFound"
    assert "gpu-triton" in conds["TritonClusterFound"].message


def test_triton_loads_every_pinned_version():
    other = PINNED + 1
    ucs = {"a": UC, "b": _uc(model={"name": "ich_detector", "version": other}),
           "c": _uc(model={"name": "other", "version": 2}, mode="triage")}
    plan = triton_rc.render_triton("gpu", TRITON, ucs, render_image="router:1")
    assert plan.models == [{"name": "ich_detector", "versions": [PINNED, other]}, {"name": "other", "versions": [2]}]
    dep = _by_kind(plan.children)["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    [init] = pod["initContainers"]
    assert init["image"] == "router:1" and init["command"] == ["pacsflow"]
    assert init["args"][:4] == ["model-repository", "render", "--target", "gpu"]
    assert init["args"][-3:] == ["--versions", f"ich_detector:{PINNED},{other}", "other:2"]
    [c] = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert f"--model-repository={triton_rc.MODELS_DIR}" in c["args"]
    # The renderer stages beside the repository: its parent must be the writable emptyDir, not the read-only root.
    assert {m["name"]: m["mountPath"] for m in init["volumeMounts"]}["models"] == str(Path(triton_rc.MODELS_DIR).parent)
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    claim = {v["name"]: v for v in pod["volumes"]}["repository"]["persistentVolumeClaim"]
    assert claim == {"claimName": "model-repo", "readOnly": True}


def test_cpu_triton_renders_the_cpu_target_and_requests_no_gpu():
    plan = triton_rc.render_triton("cpu", TRITON.model_copy(update={"gpus_per_replica": 0}), {}, render_image="r")
    pod = _by_kind(plan.children)["Deployment"]["spec"]["template"]["spec"]
    assert "--versions" not in pod["initContainers"][0]["args"]
    assert "cpu-python" in pod["initContainers"][0]["args"]
    assert pod["containers"][0]["resources"] == {}


@pytest.mark.parametrize(
    ("binding", "ready", "reason"),
    [
        (Binding(None), "False", "RouterNotFound"),
        (Binding(ROUTER, triton_cluster_exists=False), "False", "TritonClusterNotFound"),
        (Binding(ROUTER, triton_cluster_exists=True), "True", "Reconciled"),
        (Binding(ROUTER.model_copy(update={"triton_cluster": None})), "True", "Reconciled"),
        (Binding(ROUTER, True, rejected_message="unknown destination"), "False", "InvalidSpec"),
    ],
)
def test_use_case_status(binding, ready, reason):
    status = use_case_status("ns", UC, 4, None, binding)
    conds = {c["type"]: c for c in status["conditions"]}
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == (ready, reason)
    assert status["observedGeneration"] == 4 and conds["Ready"]["observedGeneration"] == 4
    assert status["modeHistory"][-1]["mode"] == "silent"


def test_missing_router_message_says_what_to_do():
    status = use_case_status("radiology", UC, 1, None, Binding(None))
    msg = {c["type"]: c for c in status["conditions"]}["RouterFound"]["message"]
    assert "ed-router" in msg and "radiology" in msg and "create it" in msg


def test_router_may_read_only_its_own_configmap():
    children = router_rc.render_router("ed", "ns", ROUTER, {}, image="img").children
    by_kind = _by_kind(children)
    cm = by_kind["ConfigMap"]["metadata"]["name"]
    sa = by_kind["ServiceAccount"]["metadata"]["name"]
    (rule,) = by_kind["Role"]["rules"]
    assert rule == {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [cm],
                    "verbs": ["get", "watch"]}
    binding = by_kind["RoleBinding"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": by_kind["Role"]["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa}]
    assert by_kind["Deployment"]["spec"]["template"]["spec"]["serviceAccountName"] == sa
    # The ServiceAccount and its grant exist before the pod that uses them.
    kinds = [c["kind"] for c in children]
    assert kinds.index("RoleBinding") < kinds.index("Deployment")


def test_routing_config_names_the_configmap_to_watch():
    plan = router_rc.render_router("ed", "radiology", ROUTER, {}, image="img")
    ref = plan.config.config_map
    assert ref is not None
    assert (ref.namespace, ref.name) == ("radiology", _by_kind(plan.children)["ConfigMap"]["metadata"]["name"])
