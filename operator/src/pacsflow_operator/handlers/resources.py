"""kopf handlers of DicomRouter, TritonCluster and AIUseCase: parse, reconcile, post Events.

Who re-renders what:

* a DicomRouter changes -> its children, its bound use cases' status, its TritonCluster(s);
* a TritonCluster changes or goes -> its children, the routers that name it and their use cases' status;
* an AIUseCase changes or goes -> its router's ConfigMap, the router's TritonCluster, its own status;
* every 10 s -> a DicomRouter's Deployment availability (Ready) and each AIUseCase's model READY in Triton
  (ModelAvailable);
* every ``evidenceRefreshSeconds`` (``PACSFLOW_OPERATOR_EVIDENCE_REFRESH_SECONDS``, default 300) -> an AIUseCase's
  ``status.evidence``, when the operator has an evidence source (verdicts and labels arrive all the time, not as
  edits of the use case).

AIUseCases carry the finalizer ``pacsflow.io/finalizer``: a deleted use case leaves the routing config
before it disappears. Routers and clusters need none (their children go by ownerReference GC), so a
missing operator never blocks their deletion.

The three kinds are namespaced, so kopf always passes a ``namespace`` (its handler protocol types it
optional, for cluster-scoped kinds): each handler asserts it once.
"""

from __future__ import annotations

import time
from typing import Any, cast

import kopf

from .. import GROUP, VERSION
from ..resources.v1alpha1 import AIUseCaseSpec
from .controller import Controller, Indexes, outcome, parse_spec


def _idx(kwargs: dict[str, Any]) -> Indexes:
    return Indexes(kwargs["routers"], kwargs["tritons"], kwargs["use_cases_by_router"])


def _ctl(memo: kopf.Memo) -> Controller:
    return cast(Controller, memo.controller)


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions", ()) if c["type"] == "Ready"), {})


# ------------------------------------------------------------------------------------- DicomRouter
@kopf.on.resume(GROUP, VERSION, "dicomrouters")
@kopf.on.create(GROUP, VERSION, "dicomrouters")
@kopf.on.update(GROUP, VERSION, "dicomrouters")
async def router_changed(namespace: str | None, name: str, body: Any, old: Any, new: Any, memo: kopf.Memo,
                         reason: str, **kwargs: Any) -> None:
    """Apply the router's children and refresh everything that depends on it."""
    assert namespace is not None
    ctl, idx = _ctl(memo), _idx(kwargs)
    plan = await ctl.sync_router(namespace, name, idx, force=True)
    await ctl.refresh_use_cases(namespace, name, idx, plan)
    clusters = {((d or {}).get("spec") or {}).get("tritonCluster") for d in (old, new, body)}
    for cluster in sorted(c for c in clusters if c):
        await ctl.sync_triton(namespace, cluster, idx)
    if plan is not None and reason != "resume":
        kopf.event(body, type="Normal", reason="Reconciled",
                  message=f"routing config rendered with {len(plan.accepted)} use case(s)")
        if plan.rejected:
            kopf.warn(body, reason="UseCasesLeftOut",
                      message="left out of the routing config (see their status): " + ", ".join(sorted(plan.rejected)))


@kopf.on.event(GROUP, VERSION, "dicomrouters")
async def router_event(type: str, namespace: str | None, name: str, body: Any, memo: kopf.Memo, **kwargs: Any) -> None:  # noqa: A002 - kopf's kwarg name
    """A deleted router: its use cases say so, its TritonCluster stops loading their models."""
    assert namespace is not None
    if type != "DELETED":
        return
    ctl, idx = _ctl(memo), _idx(kwargs)
    ctl.forget("DicomRouter", namespace, name)
    await ctl.refresh_use_cases(namespace, name, idx, None)
    cluster = (body.get("spec") or {}).get("tritonCluster")
    if cluster:
        await ctl.sync_triton(namespace, cluster, idx)


# ----------------------------------------------------------------------------------- TritonCluster
@kopf.on.resume(GROUP, VERSION, "tritonclusters")
@kopf.on.create(GROUP, VERSION, "tritonclusters")
@kopf.on.update(GROUP, VERSION, "tritonclusters")
async def triton_changed(namespace: str | None, name: str, body: Any, memo: kopf.Memo, reason: str, **kwargs: Any) -> None:
    """Apply the cluster's children; routers that name it learn that it exists."""
    assert namespace is not None
    ctl, idx = _ctl(memo), _idx(kwargs)
    await ctl.sync_triton(namespace, name, idx, force=True)
    await _refresh_routers_of(ctl, idx, namespace, name)
    if reason != "resume":
        kopf.event(body, type="Normal", reason="Reconciled", message="Triton Deployment and Service applied")


@kopf.on.event(GROUP, VERSION, "tritonclusters")
async def triton_event(type: str, namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any) -> None:  # noqa: A002
    """A deleted cluster: routers that name it and their use cases say so."""
    assert namespace is not None
    if type != "DELETED":
        return
    ctl, idx = _ctl(memo), _idx(kwargs)
    ctl.forget("TritonCluster", namespace, name)
    await _refresh_routers_of(ctl, idx, namespace, name)


async def _refresh_routers_of(ctl: Controller, idx: Indexes, namespace: str, cluster: str) -> None:
    for router in idx.routers_of_triton(namespace, cluster):
        plan = await ctl.sync_router(namespace, router, idx, force=True)
        await ctl.refresh_use_cases(namespace, router, idx, plan)


# --------------------------------------------------------------------------------------- AIUseCase
@kopf.on.resume(GROUP, VERSION, "aiusecases")
@kopf.on.create(GROUP, VERSION, "aiusecases")
@kopf.on.update(GROUP, VERSION, "aiusecases")
async def use_case_changed(namespace: str | None, name: str, body: Any, spec: Any, old: Any, memo: kopf.Memo,
                           reason: str, **kwargs: Any) -> None:
    """Re-render the router's routing config (and its Triton cluster), then this use case's status."""
    assert namespace is not None
    ctl, idx = _ctl(memo), _idx(kwargs)
    with outcome("AIUseCase"):
        uc = parse_spec(AIUseCaseSpec, spec, f"AIUseCase {name}")
    # A new use case (or one found at start-up) waits for the rest of its burst; an edit renders at once.
    settle = ctl.settings.create_settle_seconds if reason in ("create", "resume") else 0.0
    plan = await ctl.sync_router(namespace, uc.router, idx, settle=settle)
    router = idx.router(namespace, uc.router)
    cluster = (router or {}).get("spec", {}).get("tritonCluster")
    if cluster:
        await ctl.sync_triton(namespace, cluster, idx)
    written = await ctl.write_use_case_status(namespace, uc.router, name, idx, plan)
    if written is None:  # no longer indexed: being deleted
        return
    before, wanted = written
    old_mode = ((old or {}).get("spec") or {}).get("mode")
    if reason == "update" and old_mode and old_mode != uc.mode:
        kopf.event(body, type="Normal", reason="ModeChanged", message=f"mode {old_mode} → {uc.mode}; the router reloads its config")
    last = (wanted.get("modeHistory") or [{}])[-1]
    override = last.get("override")
    if override and last != (before.get("modeHistory") or [{}])[-1]:
        kopf.warn(body, reason="PromotionOverridden",
                  message=f"promoted to {last['mode']} without the evidence spec.promotion asks for, by "
                          f"{last.get('changedBy')}; approved by {override['approver']}: {override['reason']}")
    ready, before = _ready(wanted), _ready(before)
    # One Warning Event per new problem, not one per reconcile.
    if ready.get("status") == "False" and (before.get("status"), before.get("reason")) != ("False", ready["reason"]):
        kopf.warn(body, reason=ready["reason"], message=ready["message"])


# kopf fixes a timer's interval at import, before the settings exist: the timer ticks often and each use case is
# refreshed once its settings.evidence_refresh_seconds have passed.
EVIDENCE_TICK_SECONDS = 5.0


@kopf.timer(GROUP, VERSION, "aiusecases", interval=EVIDENCE_TICK_SECONDS, initial_delay=EVIDENCE_TICK_SECONDS)
async def use_case_evidence(namespace: str | None, name: str, spec: Any, memo: kopf.Memo, **kwargs: Any) -> None:
    """Re-read the use case's evidence into its status (written only when the numbers changed)."""
    assert namespace is not None
    ctl = _ctl(memo)
    router = (spec or {}).get("router")
    if ctl.evidence_source is None or not router:
        return
    last: dict[tuple[str, str], float] = memo.setdefault("evidence_read_at", {})
    now = time.monotonic()
    if now - last.get((namespace, name), float("-inf")) < ctl.settings.evidence_refresh_seconds:
        return
    last[(namespace, name)] = now
    await ctl.write_use_case_status(namespace, router, name, _idx(kwargs), None)


# How often the conditions that report running things are re-read: a router's Deployment becoming available
# (DicomRouter Ready) and Triton loading or unloading a pinned model version (AIUseCase ModelAvailable).
HEALTH_TICK_SECONDS = 10.0


@kopf.timer(GROUP, VERSION, "dicomrouters", interval=HEALTH_TICK_SECONDS, initial_delay=HEALTH_TICK_SECONDS)
async def router_health(namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    """Re-check that the router's Deployment is available (status written only when it changed)."""
    assert namespace is not None
    await _ctl(memo).sync_router(namespace, name, _idx(kwargs), check_deployment=True)


@kopf.timer(GROUP, VERSION, "aiusecases", interval=HEALTH_TICK_SECONDS, initial_delay=1.0)
async def use_case_model_ready(namespace: str | None, name: str, spec: Any, memo: kopf.Memo, **kwargs: Any) -> None:
    """Ask the router's Triton whether the pinned model version is READY; rewrite ModelAvailable if that changed."""
    assert namespace is not None
    ctl, idx = _ctl(memo), _idx(kwargs)
    router_name = str((spec or {}).get("router") or "")
    router = idx.router(namespace, router_name) if router_name else None
    cluster = ((router or {}).get("spec") or {}).get("tritonCluster")
    model = (spec or {}).get("model") or {}
    if not cluster or idx.triton(namespace, cluster) is None or "name" not in model or "version" not in model:
        return
    before = ctl.model_ready.get((namespace, cluster, model["name"], int(model["version"])))
    now = await ctl.probe_model(namespace, cluster, model["name"], int(model["version"]),
                                max_age=HEALTH_TICK_SECONDS - 1.0)
    if now != before:  # unchanged: no status write (and no evidence read, which has its own interval)
        await ctl.write_use_case_status(namespace, router_name, name, idx, None)


@kopf.on.delete(GROUP, VERSION, "aiusecases")
async def use_case_deleted(namespace: str | None, name: str, spec: Any, memo: kopf.Memo, **kwargs: Any) -> None:
    """Drop the use case from its router's config (the index already left it out) before it goes."""
    assert namespace is not None
    ctl, idx = _ctl(memo), _idx(kwargs)
    router_name = spec.get("router")
    if router_name and idx.router(namespace, router_name) is not None:
        await ctl.sync_router(namespace, router_name, idx)
        cluster = (idx.router(namespace, router_name) or {}).get("spec", {}).get("tritonCluster")
        if cluster:
            await ctl.sync_triton(namespace, cluster, idx)
    ctl.forget("AIUseCase", namespace, name)
    handled = memo.get("handled")
    if handled is not None:  # kopf's in-memory bookkeeping of it (.bookkeeping)
        handled.forget(str(kwargs["uid"]))
