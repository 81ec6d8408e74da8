"""Evidence-gated promotion on a real kube-apiserver v1.34: the ``pacsflow-promotion`` ValidatingAdmissionPolicy.

Users are impersonated with the admin client (``Impersonate-User`` / ``Impersonate-Group``); RBAC lets both
test users edit AIUseCases, so every refusal here is the policy's. The policy is bound to the test's own
namespace only, so other tests on the shared API server never meet it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pacsflow_operator.evidence import Counts, evidence
from pacsflow_operator.promotion import (
    CHANGED_BY_ANNOTATION,
    CLINICAL_LEAD_GROUP,
    OVERRIDE_ANNOTATION,
    binding,
    policy,
)
from tests.integration.test_operator import (  # noqa: F401 - pytest fixtures shared with the operator tests
    GROUP,
    REPO,
    VERSION,
    Cluster,
    admin,
    cluster,
    crds,
    example,
    run_operator,
)
from tests.peers.cluster import ControlPlane
from tests.peers.net import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

UC = "ich-head-ct"
PINNED = example("AIUseCase")["spec"]["model"]["version"]
# Sensitivity 57/60 = 0.95, specificity 36/40 = 0.90: enough for assistive (50, 0.90), not for triage (200).
GOOD = Counts(true_positive=57, false_positive=4, true_negative=36, false_negative=3)
# 30 reviewed, sensitivity 12/15 = 0.80: short of assistive on both counts.
POOR = Counts(true_positive=12, false_positive=2, true_negative=13, false_negative=3)


@pytest.fixture
def promotion_policy(admin: client.ApiClient, kube_namespace: str, crds: list[dict]) -> Iterator[None]:  # noqa: F811
    """The policy, bound to this namespace, plus RBAC letting both test groups edit AIUseCases there."""
    reg = client.AdmissionregistrationV1Api(admin)
    rbac = client.RbacAuthorizationV1Api(admin)
    body = policy()
    try:
        reg.delete_validating_admission_policy(body["metadata"]["name"])
    except ApiException as exc:
        if exc.status != 404:
            raise
    reg.create_validating_admission_policy(body)
    bind = binding(kube_namespace)
    reg.create_validating_admission_policy_binding(bind)
    rbac.create_namespaced_role(kube_namespace, {
        "metadata": {"name": "usecase-editor"},
        "rules": [{"apiGroups": [GROUP], "resources": ["aiusecases"],
                   "verbs": ["get", "list", "watch", "create", "update", "patch"]}]})
    rbac.create_namespaced_role_binding(kube_namespace, {
        "metadata": {"name": "usecase-editors"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "usecase-editor"},
        "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": g}
                     for g in (CLINICAL_LEAD_GROUP, "radiology-it")]})
    # The API server compiles the policy and type-checks it against the CRD's schema: no warnings allowed.
    checked = eventually(lambda: (p := reg.read_validating_admission_policy(body["metadata"]["name"]))
                         .status and p.status.type_checking and p.status, "policy type-checked")
    assert not checked.type_checking.expression_warnings, checked.type_checking.expression_warnings
    yield
    reg.delete_validating_admission_policy_binding(bind["metadata"]["name"])
    reg.delete_validating_admission_policy(body["metadata"]["name"])


@pytest.fixture
def as_user(kube_cluster: ControlPlane, kube_namespace: str) -> Iterator[Callable[[str, str], client.CustomObjectsApi]]:
    """``as_user(name, group)``: a CustomObjectsApi that impersonates ``name`` in ``group``."""
    with ExitStack() as stack:
        def make(name: str, group: str) -> client.CustomObjectsApi:
            api = stack.enter_context(kube_cluster.api_client())
            api.set_default_header("Impersonate-User", name)
            api.set_default_header("Impersonate-Group", group)
            return client.CustomObjectsApi(api)

        yield make


def _patch(api: client.CustomObjectsApi, ns: str, body: dict[str, Any], name: str = UC) -> dict:
    return api.patch_namespaced_custom_object(GROUP, VERSION, ns, "aiusecases", name, body)


def _mode(mode: str, user: str, **annotations: str) -> dict[str, Any]:
    return {"metadata": {"annotations": {CHANGED_BY_ANNOTATION: user, **annotations}}, "spec": {"mode": mode}}


def _refused(call: Callable[[], Any]) -> str:
    with pytest.raises(ApiException) as refused:
        call()
    assert refused.value.status in (403, 422), refused.value.body
    return _message(refused.value)


def _set_evidence(cluster: Cluster, counts: Counts, version: int = PINNED) -> None:  # noqa: F811
    cluster.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, cluster.ns, "aiusecases", UC, {"status": {"evidence": evidence(counts, version)}})


def test_promotion_needs_the_clinical_lead_group_and_the_evidence(
        cluster: Cluster, run_operator, promotion_policy: None, as_user, kube_namespace: str):  # noqa: F811
    run_operator()
    ns = kube_namespace
    alice = as_user("alice", CLINICAL_LEAD_GROUP)
    mallory = as_user("mallory", "radiology-it")
    cluster.create(example("DicomRouter"))
    cluster.create(example("AIUseCase"))  # silent: no promotion, nothing to check
    eventually(lambda: cluster.condition("AIUseCase", UC, "Ready"), "use case reconciled")

    # The policy is live once it refuses a non-lead (it is loaded a moment after it is created).
    def mallory_refused() -> str | None:
        try:
            mallory.patch_namespaced_custom_object(GROUP, VERSION, ns, "aiusecases", UC,
                                                   _mode("assistive", "mallory"), dry_run="All")
        except ApiException as exc:
            return _message(exc)
        return None

    body = eventually(mallory_refused, "policy enforced")
    assert f"only members of the group {CLINICAL_LEAD_GROUP}" in body and "mallory is not one" in body
    # Outside the guarded fields a non-lead edits as before; spec.promotion is guarded like spec.mode.
    assert _patch(mallory, ns, {"spec": {"decisionThreshold": 0.6}})["spec"]["decisionThreshold"] == 0.6
    assert "only members of the group" in _refused(
        lambda: _patch(mallory, ns, {"spec": {"promotion": {"assistive": {"minReviewed": 1, "minSensitivity": 0}}}}))

    # A lead must say who she is, and there is no evidence yet.
    assert "must set the annotation pacsflow.io/changed-by to your user name (alice)" in _refused(
        lambda: _patch(alice, ns, {"spec": {"mode": "assistive"}}))
    assert "no evidence yet" in _refused(lambda: _patch(alice, ns, _mode("assistive", "alice")))

    # Evidence below the bar: the message says what is missing.
    _set_evidence(cluster, POOR)
    body = _refused(lambda: _patch(alice, ns, _mode("assistive", "alice")))
    assert "cannot be promoted from silent to assistive" in body
    assert "reviewed 30 < 50" in body and "sensitivity 0.8 < 0.9" in body
    assert "specificity" not in body.split("spec.promotion.assistive")[1].split(". Review")[0]
    # Evidence of another model version does not count.
    _set_evidence(cluster, GOOD, version=PINNED + 1)
    assert f"is of model version {PINNED + 1}, not the pinned version {PINNED}" in _refused(
        lambda: _patch(alice, ns, _mode("assistive", "alice")))

    # Evidence above the bar: accepted, and recorded with who and the evidence at the time.
    _set_evidence(cluster, GOOD)
    assert _patch(alice, ns, _mode("assistive", "alice"))["spec"]["mode"] == "assistive"
    history = eventually(lambda: (h := cluster.get("AIUseCase", UC)["status"].get("modeHistory")) and len(h) == 2
                         and h, "assistive in status.modeHistory")
    assert history[1]["changedBy"] == "alice" and "override" not in history[1]
    assert history[1]["evidence"]["reviewed"] == 100
    assert history[1]["evidence"]["sensitivity"]["value"] == 0.95

    # Triage needs 200 reviewed: refused; a malformed override is refused as such; a proper one goes through.
    assert "reviewed 100 < 200" in _refused(lambda: _patch(alice, ns, _mode("triage", "alice")))
    assert "must read" in _refused(lambda: _patch(alice, ns, _mode("triage", "alice", **{
        OVERRIDE_ANNOTATION: "dr-lind said so"})))
    override = "approver=dr-lind; reason=validated on 400 local cases (QA-2026-11)"
    assert _patch(alice, ns, _mode("triage", "alice", **{OVERRIDE_ANNOTATION: override}))["spec"]["mode"] == "triage"
    history = eventually(lambda: (h := cluster.get("AIUseCase", UC)["status"]["modeHistory"]) and len(h) == 3 and h,
                         "triage in status.modeHistory")
    assert history[2]["mode"] == "triage" and history[2]["changedBy"] == "alice"
    assert history[2]["override"] == {"approver": "dr-lind", "reason": "validated on 400 local cases (QA-2026-11)"}
    assert history[2]["evidence"]["reviewed"] == 100
    eventually(lambda: any(e.reason == "PromotionOverridden" and e.type == "Warning" and "dr-lind" in e.message
                           for e in cluster.events(UC)), "PromotionOverridden Warning Event")

    # Demotion needs no evidence (only the group and the name); the override left on the object does not
    # count a second time.
    assert "only members of the group" in _refused(lambda: _patch(mallory, ns, _mode("silent", "mallory")))
    _patch(alice, ns, _mode("assistive", "alice"))
    body = _refused(lambda: _patch(alice, ns, _mode("triage", "alice")))
    assert "reviewed 100 < 200" in body
    history = eventually(lambda: (h := cluster.get("AIUseCase", UC)["status"]["modeHistory"]) and len(h) == 4 and h,
                         "demotion in status.modeHistory")
    assert history[3]["mode"] == "assistive" and "override" not in history[3]

    # A new model version above silent would be an unevaluated model shown to readers.
    swap = {"spec": {"model": {"name": "ich_detector", "version": PINNED + 1}}}
    assert "only members of the group" in _refused(lambda: _patch(mallory, ns, swap))
    assert "spec.model cannot change while the use case is in assistive mode" in _refused(
        lambda: _patch(alice, ns, swap))
    _patch(alice, ns, _mode("silent", "alice"))
    assert _patch(mallory, ns, swap)["spec"]["model"]["version"] == PINNED + 1  # in silent mode: anyone may


def test_override_does_not_skip_a_phase_and_creation_above_silent_is_a_promotion(
        cluster: Cluster, promotion_policy: None, as_user, kube_namespace: str):  # noqa: F811
    ns = kube_namespace
    alice = as_user("alice", CLINICAL_LEAD_GROUP)
    body = copy.deepcopy(example("AIUseCase"))
    body["spec"]["mode"] = "assistive"
    body["metadata"]["annotations"] = {CHANGED_BY_ANNOTATION: "alice"}

    def create() -> dict:
        return alice.create_namespaced_custom_object(GROUP, VERSION, ns, "aiusecases", body, dry_run="All")

    assert "no evidence yet" in eventually(lambda: _try(create), "policy enforced on create")
    cluster.create(example("AIUseCase"))
    # The CRD's one-phase-at-a-time rule still holds, override or not.
    override = {OVERRIDE_ANNOTATION: "approver=dr-lind; reason=pilot"}
    assert "cannot go from silent to triage" in _refused(lambda: _patch(alice, ns, _mode("triage", "alice", **override)))
    assert _patch(alice, ns, _mode("assistive", "alice", **override))["spec"]["mode"] == "assistive"


def _try(call: Callable[[], Any]) -> str | None:
    try:
        call()
    except ApiException as exc:
        return _message(exc)
    return None


def _message(exc: ApiException) -> str:
    return str(json.loads(exc.body)["message"])


def test_chart_ships_the_same_policy_with_its_group():
    """The chart's copy is the generated one, with the group from values (and off when enforce is false)."""
    import subprocess

    from tests.peers.cluster import helm_path

    def template(*args: str) -> list[dict]:
        out = subprocess.run([str(helm_path()), "template", "pf", str(REPO / "charts" / "pacsflow"), "--kube-version",
                              "1.34.0", *args], capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stderr
        return [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"].startswith("ValidatingAdmissionPolicy")]

    docs = template("--set", "promotion.clinicalLeadGroup=Hospital AI Leads")
    assert docs == [policy("Hospital AI Leads"), binding()]
    assert template("--set", "promotion.enforce=false") == []
