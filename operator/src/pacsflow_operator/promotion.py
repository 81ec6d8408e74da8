"""Evidence-gated promotion, enforced by the API server: the ``pacsflow-promotion`` ValidatingAdmissionPolicy.

The policy (admissionregistration.k8s.io/v1, GA since Kubernetes 1.30) guards every CREATE and UPDATE of an
AIUseCase that touches ``spec.mode``, ``spec.promotion``, the two annotations below, or ``spec.model`` above silent:

1. only members of the clinical-lead group (:data:`CLINICAL_LEAD_GROUP` unless the chart value
   ``promotion.clinicalLeadGroup`` says otherwise) may make such a change at all;
2. a change of ``spec.mode`` carries ``pacsflow.io/changed-by`` equal to the requesting user's name, so the
   name the operator copies into ``status.modeHistory`` is one the API server vouched for;
3. a promotion (a higher phase, or a new use case created above silent) needs ``status.evidence`` of the
   pinned model version that meets ``spec.promotion.<phase>``; the refusal lists what is missing;
4. ``spec.model`` does not change while the use case is above silent (the evidence is of the old model);
5. 3 and 4 give way when the same edit sets (or changes) ``pacsflow.io/promotion-override:
   "approver=<name>; reason=<text>"``: an override counts once, for the edit that sets it, and the operator
   records it with the change.

It is CEL, not a CRD ``x-kubernetes-validations`` rule, because a CRD rule sees neither annotations nor the
requesting user. The one-phase-at-a-time rule stays on the CRD (``MODE_TRANSITION_RULE``).
"""

from __future__ import annotations

import re
from typing import Any

from pacsflow_router.config import MODES

from . import GROUP, VERSION

POLICY_NAME = "pacsflow-promotion"
#: The group whose members may change spec.mode / spec.promotion (map your IdP group onto it, or set the
#: chart value promotion.clinicalLeadGroup).
CLINICAL_LEAD_GROUP = "pacsflow:clinical-leads"
CHANGED_BY_ANNOTATION = f"{GROUP}/changed-by"
OVERRIDE_ANNOTATION = f"{GROUP}/promotion-override"
_OVERRIDE_RE = r"^approver=([^;]*[^;\s])\s*;\s*reason=(.*\S.*)$"
_OVERRIDE_PATTERN = re.compile(_OVERRIDE_RE, re.DOTALL)
OVERRIDE_FORMAT = "approver=<name>; reason=<text>"


def parse_override(value: str | None) -> tuple[str, str] | None:
    """(approver, reason) of an override annotation, or ``None`` when absent or malformed.

    Examples
    --------
    >>> parse_override("approver=dr-lind; reason=validated on 400 local cases")
    ('dr-lind', 'validated on 400 local cases')
    """
    match = _OVERRIDE_PATTERN.match((value or "").strip())
    if not match:
        return None
    return match.group(1).strip(), match.group(2).strip()


def _annotation(obj: str, key: str) -> str:
    guard = f"{obj} != null && " if obj == "oldObject" else ""
    return (f"{guard}has({obj}.metadata.annotations) && '{key}' in {obj}.metadata.annotations"
            f" ? {obj}.metadata.annotations['{key}'] : ''")


def _shortfalls(phase: str) -> str:
    """CEL list of what ``variables.ev`` (``status.evidence``) lacks for ``spec.promotion.<phase>``."""
    c, e = f"object.spec.promotion.{phase}", "variables.ev"

    def bar(field: str, crit: str, label: str, optional: bool) -> str:
        has_crit = f"has({c}.{crit}) && " if optional else ""
        return (f"(({has_crit}(!has({e}.{field}) || {e}.{field}.value < {c}.{crit}))"
                f" ? ['{label} ' + (has({e}.{field}) ? string({e}.{field}.value) : 'unknown (none reviewed)')"
                f" + ' < ' + string({c}.{crit})] : [])")

    return (f"(({e}.reviewed < {c}.minReviewed) ? ['reviewed ' + string({e}.reviewed) + ' < ' "
            f"+ string({c}.minReviewed)] : [])"
            f" + {bar('sensitivity', 'minSensitivity', 'sensitivity', False)}"
            f" + {bar('specificity', 'minSpecificity', 'specificity', True)}"
            f" + {bar('ppv', 'minPPV', 'PPV', True)}")


_MISSING = (
    "!variables.hasEvidence"
    " ? ['no evidence yet (status.evidence is empty: the operator writes it from reviewed cases)']"
    " : ((variables.ev.modelVersion != object.spec.model.version)"
    " ? ['status.evidence is of model version ' + string(variables.ev.modelVersion) + ', not the pinned version '"
    " + string(object.spec.model.version)]"
    f" : ((object.spec.mode == 'triage') ? ({_shortfalls('triage')}) : ({_shortfalls('assistive')})))"
)


def policy(group: str = CLINICAL_LEAD_GROUP) -> dict[str, Any]:
    """The ``ValidatingAdmissionPolicy`` manifest.

    Parameters
    ----------
    group
        Name of the clinical-lead group (a CEL string literal: no quote or backslash).

    Returns
    -------
    dict
        An ``admissionregistration.k8s.io/v1`` ValidatingAdmissionPolicy.

    Raises
    ------
    ValueError
        ``group`` cannot be written into a CEL string literal.
    """
    if not group or re.search(r"['\"\\\n]", group):
        raise ValueError(f"clinical-lead group {group!r} must be non-empty without quotes or backslashes")
    rank = "{" + ", ".join(f"'{m}': {i}" for i, m in enumerate(MODES)) + "}"
    variables = [
        ("oldMode", "oldObject == null ? 'silent' : oldObject.spec.mode"),
        ("modeChanged", "object.spec.mode != variables.oldMode"),
        ("promoting", f"{rank}[object.spec.mode] > {rank}[variables.oldMode]"),
        ("changedBy", _annotation("object", CHANGED_BY_ANNOTATION)),
        ("override", _annotation("object", OVERRIDE_ANNOTATION)),
        ("oldChangedBy", _annotation("oldObject", CHANGED_BY_ANNOTATION)),
        ("oldOverride", _annotation("oldObject", OVERRIDE_ANNOTATION)),
        ("freshOverride", "variables.override != '' && variables.override != variables.oldOverride"),
        ("promotionChanged",
         "oldObject != null && (has(object.spec.promotion) != has(oldObject.spec.promotion) || "
         "(has(object.spec.promotion) && object.spec.promotion != oldObject.spec.promotion))"),
        # A new model in assistive or triage mode would be an unevaluated model shown to readers.
        ("modelSwapped", "oldObject != null && object.spec.mode != 'silent' && object.spec.model != oldObject.spec.model"),
        ("guarded",
         "variables.modeChanged || variables.promotionChanged || variables.modelSwapped"
         " || variables.changedBy != variables.oldChangedBy || variables.override != variables.oldOverride"),
        ("hasEvidence", "oldObject != null && has(oldObject.status) && has(oldObject.status.evidence)"),
        ("ev", "oldObject.status.evidence"),
        ("missing", _MISSING),
    ]
    guarded_keys = f"spec.mode, spec.promotion or the {CHANGED_BY_ANNOTATION} / {OVERRIDE_ANNOTATION} annotations"
    validations = [
        {
            "expression": f"!variables.guarded || '{group}' in request.userInfo.groups",
            "messageExpression": (
                f"'only members of the group {group} may change {guarded_keys} of an AIUseCase; user ' + "
                "request.userInfo.username + ' is not one: ask a clinical lead to make the change'"),
            "reason": "Forbidden",
        },
        {
            "expression": "!variables.modeChanged || variables.changedBy == request.userInfo.username",
            "messageExpression": (
                f"'a change of spec.mode must set the annotation {CHANGED_BY_ANNOTATION} to your user name (' + "
                "request.userInfo.username + ') in the same edit; the operator records it in status.modeHistory'"),
            "reason": "Invalid",
        },
        {
            "expression": f"!variables.freshOverride || variables.override.matches(r'{_OVERRIDE_RE}')",
            "message": f"{OVERRIDE_ANNOTATION} must read \"{OVERRIDE_FORMAT}\" (both non-empty)",
            "reason": "Invalid",
        },
        {
            "expression": "!variables.modelSwapped || variables.freshOverride",
            "messageExpression": (
                "'spec.model cannot change while the use case is in ' + object.spec.mode + ' mode: the evidence is of "
                "the model version it was promoted with. Demote it to silent, change the model, collect evidence "
                f"and promote again, or override in the same edit with the annotation {OVERRIDE_ANNOTATION}: "
                f"\"{OVERRIDE_FORMAT}\".'"),
            "reason": "Forbidden",
        },
        {
            "expression": "!variables.promoting || variables.freshOverride || size(variables.missing) == 0",
            "messageExpression": (
                "'spec.mode cannot be promoted from ' + variables.oldMode + ' to ' + object.spec.mode + "
                "': status.evidence falls short of spec.promotion.' + object.spec.mode + ': ' + "
                "variables.missing.join('; ') + '. Review more cases, or let a clinical lead override in the "
                f"same edit with the annotation {OVERRIDE_ANNOTATION}: \"{OVERRIDE_FORMAT}\".'"),
            "reason": "Forbidden",
        },
    ]
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": POLICY_NAME, "labels": {"app.kubernetes.io/part-of": "pacsflow"}},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{
                "apiGroups": [GROUP], "apiVersions": [VERSION], "operations": ["CREATE", "UPDATE"],
                "resources": ["aiusecases"],
            }]},
            "variables": [{"name": n, "expression": x} for n, x in variables],
            "validations": validations,
        },
    }


def binding(namespace: str | None = None) -> dict[str, Any]:
    """The ``ValidatingAdmissionPolicyBinding`` that enforces :func:`policy` (Deny).

    Parameters
    ----------
    namespace
        Enforce only in this namespace (tests on a shared API server); every namespace when ``None``.

    Returns
    -------
    dict
        An ``admissionregistration.k8s.io/v1`` ValidatingAdmissionPolicyBinding.
    """
    spec: dict[str, Any] = {"policyName": POLICY_NAME, "validationActions": ["Deny"]}
    name = POLICY_NAME
    if namespace is not None:
        spec["matchResources"] = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
        name = f"{POLICY_NAME}-{namespace}"
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "pacsflow"}},
        "spec": spec,
    }
