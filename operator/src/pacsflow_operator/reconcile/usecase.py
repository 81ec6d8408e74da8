"""AIUseCase status: whether its router and model are there, and its rollout history."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..resources.v1alpha1 import AIUseCaseSpec, DicomRouterSpec
from .conditions import Cond, merge_conditions, mode_history, ready


@dataclass(frozen=True)
class Binding:
    """What an AIUseCase is bound to, as found in the API (``None``: the object does not exist)."""

    router: DicomRouterSpec | None
    triton_cluster_exists: bool | None = None
    rejected_message: str | None = None


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
    elif binding.triton_cluster_exists:
        conds.append(Cond("ModelAvailable", "True", "ModelConfigured",
                          f"TritonCluster {cluster} is configured to load {model}"))
    else:
        conds.append(Cond("ModelAvailable", "False", "TritonClusterNotFound",
                          f"the router's TritonCluster {cluster!r} does not exist in namespace {namespace!r}: "
                          "create it or fix the DicomRouter's spec.tritonCluster"))
    return [ready(conds, f"running in {spec.mode} mode on DicomRouter {spec.router}"), *conds]


def use_case_status(
    namespace: str,
    spec: AIUseCaseSpec,
    generation: int | None,
    current: Mapping[str, Any] | None,
    binding: Binding,
    now: datetime | None = None,
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

    Returns
    -------
    dict
        ``observedGeneration``, ``conditions`` and ``modeHistory`` (camelCase, ready to patch).
    """
    current = current or {}
    return {
        "observedGeneration": generation,
        "conditions": merge_conditions(
            current.get("conditions"), use_case_conditions(namespace, spec, binding), generation, now
        ),
        "modeHistory": mode_history(current.get("modeHistory"), spec.mode, generation, now),
    }
