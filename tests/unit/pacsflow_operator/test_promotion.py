"""Evidence arithmetic, the override annotation and what status.modeHistory records (pure; the policy itself is
exercised on a real API server in tests/integration/test_promotion.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pacsflow_operator.evidence import Counts, evidence, proportion, wilson_interval
from pacsflow_operator.promotion import (
    CHANGED_BY_ANNOTATION,
    CLINICAL_LEAD_GROUP,
    OVERRIDE_ANNOTATION,
    binding,
    parse_override,
    policy,
)
from pacsflow_operator.reconcile.usecase import change_facts, with_evidence
from pacsflow_operator.resources.v1alpha1 import AIUseCaseSpec, AIUseCaseStatus

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("k", "n", "lower", "upper"), [
    # Reference values: Newcombe (1998) table I and R's binom::binom.confint(method = "wilson").
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (10, 10, 0.7225, 1.0),
])
def test_wilson_interval_matches_published_values(k: int, n: int, lower: float, upper: float):
    lo, hi = wilson_interval(k, n)
    assert (round(lo, 4), round(hi, 4)) == (lower, upper)


@pytest.mark.parametrize(("k", "n"), [(0, 0), (3, 2), (-1, 5)])
def test_wilson_interval_refuses_impossible_counts(k: int, n: int):
    with pytest.raises(ValueError, match="successes <= trials"):
        wilson_interval(k, n)


def test_evidence_has_the_four_rates_and_leaves_out_undefined_ones():
    ev = evidence(Counts(true_positive=57, false_positive=4, true_negative=36, false_negative=3), 2, T0)
    assert ev["reviewed"] == 100 and ev["modelVersion"] == 2 and ev["computedAt"] == "2026-11-30T12:00:00Z"
    assert ev["sensitivity"]["value"] == 0.95 and ev["sensitivity"]["denominator"] == 60
    assert ev["specificity"]["value"] == 0.9 and ev["ppv"]["numerator"] == 57 and ev["npv"]["denominator"] == 39
    assert ev["sensitivity"]["lower"] < 0.95 < ev["sensitivity"]["upper"]
    AIUseCaseStatus.model_validate({"evidence": ev})  # the shape the CRD schema accepts
    none_positive = evidence(Counts(0, 0, 5, 0), 1, T0)
    assert "sensitivity" not in none_positive and "ppv" not in none_positive
    assert none_positive["specificity"]["value"] == 1.0
    assert proportion(0, 0) is None
    with pytest.raises(ValueError, match="negative"):
        Counts(-1, 0, 0, 0)


def test_with_evidence_keeps_computed_at_when_the_numbers_did_not_change():
    stored = evidence(Counts(5, 1, 5, 1), 1, T0)
    later = evidence(Counts(5, 1, 5, 1), 1, datetime(2026, 12, 1, tzinfo=UTC))
    assert with_evidence({"evidence": stored}, later) == stored
    moved = evidence(Counts(6, 1, 5, 1), 1, datetime(2026, 12, 1, tzinfo=UTC))
    assert with_evidence({"evidence": stored}, moved) == moved
    assert with_evidence({"evidence": stored}, None) is None


@pytest.mark.parametrize(("value", "parsed"), [
    ("approver=dr-lind; reason=validated on 400 local cases", ("dr-lind", "validated on 400 local cases")),
    ("approver = dr lind ;reason=pilot", None),
    ("approver=dr lind;reason=pilot", ("dr lind", "pilot")),
    ("approver=; reason=pilot", None),
    ("approver=dr-lind; reason=  ", None),
    ("dr-lind said so", None),
    (None, None),
])
def test_parse_override(value: str | None, parsed: tuple[str, str] | None):
    assert parse_override(value) == parsed


def test_change_facts_record_who_the_evidence_and_a_new_override_only():
    ev = evidence(Counts(57, 4, 36, 3), 2, T0)
    override = {OVERRIDE_ANNOTATION: "approver=dr-lind; reason=pilot", CHANGED_BY_ANNOTATION: "alice"}
    current = {"evidence": ev, "modeHistory": [{"mode": "silent"}]}
    facts = change_facts("assistive", override, current)
    assert facts == {"changedBy": "alice", "override": {"approver": "dr-lind", "reason": "pilot"}, "evidence": ev}
    # The same override still on the object counts once: the next promotion does not record it again.
    current["modeHistory"] += [{"mode": "assistive", **facts}]
    assert change_facts("triage", override, current)["override"] is None
    # A demotion records no override, whatever the annotations say.
    fresh = {**override, OVERRIDE_ANNOTATION: "approver=dr-ek; reason=other"}
    assert change_facts("silent", fresh, current)["override"] is None
    assert change_facts("silent", None, {}) == {"changedBy": None, "override": None, "evidence": None}


def test_promotion_defaults_are_the_issue_s_bars():
    spec = AIUseCaseSpec.model_validate({"router": "r", "model": {"name": "m", "version": 1}})
    assert (spec.promotion.assistive.min_reviewed, spec.promotion.assistive.min_sensitivity) == (50, 0.9)
    assert (spec.promotion.triage.min_reviewed, spec.promotion.triage.min_specificity) == (200, 0.8)
    custom = AIUseCaseSpec.model_validate({"router": "r", "model": {"name": "m", "version": 1}, "promotion": {
        "triage": {"minReviewed": 500, "minSensitivity": 0.97, "minPPV": 0.3}}})
    assert custom.promotion.triage.min_ppv == 0.3 and custom.promotion.assistive.min_reviewed == 50


def test_policy_names_the_group_and_refuses_one_that_breaks_cel():
    text = str(policy("hospital:ai-leads"))
    assert "'hospital:ai-leads' in request.userInfo.groups" in text and CLINICAL_LEAD_GROUP not in text
    for bad in ("", "a'b", 'a"b', "a\\b"):
        with pytest.raises(ValueError, match="clinical-lead group"):
            policy(bad)
    assert binding()["metadata"]["name"] == "pacsflow-promotion" and "matchResources" not in binding()["spec"]
    assert binding("ns1")["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ns1"}


class _NoRouters:
    def router(self, namespace: str, name: str) -> None:
        return None


def test_controller_writes_status_evidence_from_its_source_for_the_pinned_version():
    from kubernetes.client import Configuration

    from pacsflow_operator.handlers.controller import Controller
    from pacsflow_operator.kube import Kube
    from pacsflow_operator.settings import OperatorSettings

    asked = []

    def source(namespace: str, name: str, version: int) -> Counts | None:
        asked.append((namespace, name, version))
        return Counts(57, 4, 36, 3) if version == 2 else None

    spec = AIUseCaseSpec.model_validate({"router": "r", "model": {"name": "m", "version": 2}})
    ctl = Controller(Kube(Configuration()), OperatorSettings(), source)
    status = ctl.use_case_status("ns", "uc", spec, 1, {}, _NoRouters(), None)  # type: ignore[arg-type]
    assert asked == [("ns", "uc", 2)]
    assert status["evidence"]["modelVersion"] == 2 and status["evidence"]["reviewed"] == 100
    other = spec.model_copy(update={"model": spec.model.model_copy(update={"version": 3})})
    assert "evidence" not in ctl.use_case_status("ns", "uc", other, 1, {}, _NoRouters(), None)  # type: ignore[arg-type]
    without = Controller(Kube(Configuration()), OperatorSettings())
    assert "evidence" not in without.use_case_status("ns", "uc", spec, 1, {}, _NoRouters(), None)  # type: ignore[arg-type]
