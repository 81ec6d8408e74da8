"""AIUseCase status: whether its router and model are there, and its rollout history."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pacsflow_router.config import MODES

from ..promotion import CHANGED_BY_ANNOTATION, OVERRIDE_ANNOTATION, parse_override
from ..resources.v1alpha1 import AIUseCaseSpec, DicomRouterSpec
from .conditions import Cond, merge_conditions, mode_history, ready


@dataclass(frozen=True)
class Binding:
    """What an AIUseCase is bound to, as found in the API (``None``: the object does not exist)."""

    router: DicomRouterSpec | None
    triton_cluster_exists: bool | None = None
    rejected_message: str | None = None
    #: What the TritonCluster's Triton last answered for the pinned version (True: READY, False: not ready,
    #: None: not asked yet or unreachable).
    model_ready: bool | None = None


def use_case_conditions(namespace: str, spec: AIUseCaseSpec, binding: Binding) -> list[Cond]:
    """``Ready``, ``RouterFound``, ``ConfigRendered`` and ``ModelAvailable`` for one AIUseCase.

    Parameters
    ----------
    namespace
        The use case's namespace.
    spec
        Its spec.
    binding
        Its router (and the router's Triton cluster) as found in the API, and why the router's config
        left it out, if it did.

    Returns
    -------
    list of Cond
        ``Ready`` first.
    """
    if binding.router is None:
        conds = [
            Cond("RouterFound", "False", "RouterNotFound",
                 f"DicomRouter {spec.router!r} does not exist in namespace {namespace!r}: create it or fix "
                 "spec.router. Nothing runs for this use case until then."),
            Cond("ModelAvailable", "Unknown", "RouterNotFound", "no router, so no inference backend to ask"),
        ]
        return [ready(conds, ""), *conds]
    conds = [Cond("RouterFound", "True", "Found", f"bound to DicomRouter {spec.router}")]
    if binding.rejected_message:
        conds.append(Cond("ConfigRendered", "False", "InvalidSpec",
                          f"left out of the router's routing config: {binding.rejected_message}"))
    else:
        conds.append(Cond("ConfigRendered", "True", "Rendered",
                          f"in the routing config of DicomRouter {spec.router} as mode {spec.mode}"))
    model = f"{spec.model.name} version {spec.model.version}"
    cluster = binding.router.triton_cluster
    if cluster is None:
        conds.append(Cond("ModelAvailable", "Unknown", "EmbeddedInference",
                          f"the router runs {model} in-process from its own model repository and reports a "
                          "missing model in its metrics and audit trail"))
    elif binding.triton_cluster_exists and binding.model_ready:
        conds.append(Cond("ModelAvailable", "True", "ModelReady", f"Triton of TritonCluster {cluster} reports {model} READY"))
    elif binding.triton_cluster_exists and binding.model_ready is False:
        conds.append(Cond("ModelAvailable", "False", "ModelNotReady",
                          f"Triton of TritonCluster {cluster} reports {model} not ready: check that the version "
                          "exists in the model repository and the Triton pod's log for why it did not load"))
    elif binding.triton_cluster_exists:
        conds.append(Cond("ModelAvailable", "Unknown", "TritonNotAsked",
                          f"TritonCluster {cluster} is configured to load {model}, but its Triton has not answered "
                          "(not running or unreachable) whether that version is READY"))
    else:
        conds.append(Cond("ModelAvailable", "False", "TritonClusterNotFound",
                          f"the router's TritonCluster {cluster!r} does not exist in namespace {namespace!r}: "
                          "create it or fix the DicomRouter's spec.tritonCluster"))
    return [ready(conds, f"running in {spec.mode} mode on DicomRouter {spec.router}"), *conds]


def change_facts(
    mode: str, annotations: Mapping[str, str] | None, current: Mapping[str, Any]
) -> dict[str, Any]:
    """What ``status.modeHistory`` records about a change into ``mode``: who (the changed-by annotation, which
    the promotion policy checks against the requesting user), the override if this promotion used a new one,
    and ``status.evidence`` as it stood.

    An override annotation stays on the object after its edit; the policy lets it count only for the edit
    that sets or changes it, so the operator records it only when it differs from the last one recorded.
    """
    annotations = annotations or {}
    history = list(current.get("modeHistory") or ())
    previous = history[-1]["mode"] if history else "silent"
    override = parse_override(annotations.get(OVERRIDE_ANNOTATION))
    last_override = next((h.get("override") for h in reversed(history) if h.get("override")), None)
    record = None
    if override is not None and MODES.index(mode) > MODES.index(previous):
        candidate = {"approver": override[0], "reason": override[1]}
        if candidate != last_override:
            record = candidate
    return {
        "changedBy": annotations.get(CHANGED_BY_ANNOTATION) or None,
        "override": record,
        "evidence": current.get("evidence"),
    }


def with_evidence(current: Mapping[str, Any], fresh: dict[str, Any] | None) -> dict[str, Any] | None:
    """``status.evidence`` to write: ``fresh`` unless only its ``computedAt`` differs from the stored one
    (so an unchanged store causes no status write); ``None`` (leave it) without a fresh value."""
    if fresh is None:
        return None
    stored = current.get("evidence") or {}
    same = {k: v for k, v in stored.items() if k != "computedAt"} == {
        k: v for k, v in fresh.items() if k != "computedAt"}
    return dict(stored) if same else fresh


def use_case_status(
    namespace: str,
    spec: AIUseCaseSpec,
    generation: int | None,
    current: Mapping[str, Any] | None,
    binding: Binding,
    now: datetime | None = None,
    annotations: Mapping[str, str] | None = None,
    evidence: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The full ``status`` of an AIUseCase after a reconcile.

    Parameters
    ----------
    namespace, spec, generation
        The use case's namespace, spec and ``metadata.generation``.
    current
        Its ``status`` as stored.
    binding
        See :func:`use_case_conditions`.
    now
        Time of this reconcile.
    annotations
        The use case's ``pacsflow.io/changed-by`` and ``pacsflow.io/promotion-override`` annotations.
    evidence
        Freshly computed ``status.evidence`` (:func:`pacsflow_operator.evidence.evidence`); ``None``: no
        evidence source, the stored value stays.

    Returns
    -------
    dict
        ``observedGeneration``, ``conditions``, ``modeHistory`` and, with fresh evidence, ``evidence``
        (camelCase, ready to patch).
    """
    current = current or {}
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merge_conditions(
            current.get("conditions"), use_case_conditions(namespace, spec, binding), generation, now
        ),
        "modeHistory": mode_history(current.get("modeHistory"), spec.mode, generation, now,
                                    change_facts(spec.mode, annotations, current)),
    }
    written = with_evidence(current, evidence)
    if written is not None:
        status["evidence"] = written
    return status
