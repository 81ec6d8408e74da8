"""kopf handlers of DicomRouter, TritonCluster and AIUseCase: parse, reconcile, post Events.

Who re-renders what:

* a DicomRouter changes -> its children, its bound use cases' status, its TritonCluster(s);
* a TritonCluster changes or goes -> its children, the routers that name it and their use cases' status;
* an AIUseCase changes or goes -> its router's ConfigMap, the router's TritonCluster, its own status;
* every 10 s, per DicomRouter -> its Deployment availability (Ready) and, for each of its AIUseCases, the model
  version READY in Triton (ModelAvailable);
* every ``evidenceRefreshSeconds`` (``PACSFLOW_OPERATOR_EVIDENCE_REFRESH_SECONDS``, default 300), per DicomRouter ->
  its AIUseCases' ``status.evidence``, when the operator has an evidence source (verdicts and labels arrive all the
  time, not as edits of the use case). A use case whose router does not exist is not refreshed until it does.

AIUseCases carry no finalizer: a deleted use case leaves the routing config when kopf sees it go (or its deletion
start), and one deleted while the operator is down is left out by its router's render at start-up. DicomRouters
carry kopf's finalizer ``pacsflow.io/finalizer`` because of their timers; their children go by ownerReference GC.

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
    plan = await ctl.sync_router(namespace, uc.router, idx, settle=settle,
                                 settle_max=ctl.settings.create_settle_max_seconds)
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


# Periodic re-reads run per DicomRouter, over its use cases: a timer on each AIUseCase would make kopf put its
# finalizer on every use case (kopf blocks the deletion of objects with timers), one PATCH and one watch event per
# new use case, a third of what a burst of 200 creations cost (python -m bench operator).

# kopf fixes a timer's interval at import, before the settings exist: the timer ticks often and each use case is
# refreshed once its settings.evidence_refresh_seconds have passed.
EVIDENCE_TICK_SECONDS = 5.0


@kopf.timer(GROUP, VERSION, "dicomrouters", interval=EVIDENCE_TICK_SECONDS, initial_delay=EVIDENCE_TICK_SECONDS)
async def use_cases_evidence(namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    """Re-read the evidence of the router's use cases into their status (written only when the numbers changed)."""
    assert namespace is not None
    ctl, idx = _ctl(memo), _idx(kwargs)
    if ctl.evidence_source is None:
        return
    last: dict[tuple[str, str], float] = memo.setdefault("evidence_read_at", {})
    for uc_name in idx.use_cases(namespace, name):
        now = time.monotonic()
        if now - last.get((namespace, uc_name), float("-inf")) < ctl.settings.evidence_refresh_seconds:
            continue
        last[(namespace, uc_name)] = now
        await ctl.write_use_case_status(namespace, name, uc_name, idx, None)


# How often the conditions that report running things are re-read: a router's Deployment becoming available
# (DicomRouter Ready) and Triton loading or unloading a pinned model version (AIUseCase ModelAvailable).
HEALTH_TICK_SECONDS = 10.0


@kopf.timer(GROUP, VERSION, "dicomrouters", interval=HEALTH_TICK_SECONDS, initial_delay=HEALTH_TICK_SECONDS)
async def router_health(namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
    """Re-check that the router's Deployment is available, and ask its Triton whether each of its use cases'
    pinned model version is READY (statuses written only when that changed)."""
    assert namespace is not None
    ctl, idx = _ctl(memo), _idx(kwargs)
    await ctl.sync_router(namespace, name, idx, check_deployment=True)
    router = idx.router(namespace, name)
    cluster = ((router or {}).get("spec") or {}).get("tritonCluster")
    if not cluster or idx.triton(namespace, cluster) is None:
        return
    for uc_name, entry in idx.use_cases(namespace, name).items():
        model = (entry.get("spec") or {}).get("model") or {}
        if "name" not in model or "version" not in model:
            continue
        before = ctl.model_ready.get((namespace, cluster, model["name"], int(model["version"])))
        now = await ctl.probe_model(namespace, cluster, model["name"], int(model["version"]),
                                    max_age=HEALTH_TICK_SECONDS - 1.0)
        if now != before:  # unchanged: no status write (and no evidence read, which has its own interval)
            await ctl.write_use_case_status(namespace, name, uc_name, idx, None)


@kopf.on.event(GROUP, VERSION, "aiusecases")
async def use_case_event(type: str, namespace: str | None, name: str, body: Any, memo: kopf.Memo,  # noqa: A002
                         **kwargs: Any) -> None:
    """A deleted use case (the index has already left it out): its router's config drops it.

    No finalizer: the router's config is rendered from the index, so a use case deleted while the operator is
    down is dropped by the router's render at start-up (kopf's resume), and a missing operator never blocks a
    deletion. A use case held by someone else's finalizer leaves the config as soon as its deletion starts.
    """
    assert namespace is not None
    if type != "DELETED" and not (body.get("metadata") or {}).get("deletionTimestamp"):
        return
    ctl, idx = _ctl(memo), _idx(kwargs)
    router_name = (body.get("spec") or {}).get("router")
    if router_name and idx.router(namespace, router_name) is not None:
        await ctl.sync_router(namespace, router_name, idx)
        cluster = (idx.router(namespace, router_name) or {}).get("spec", {}).get("tritonCluster")
        if cluster:
            await ctl.sync_triton(namespace, cluster, idx)
    if type == "DELETED":
        ctl.forget("AIUseCase", namespace, name)
        handled = memo.get("handled")
        if handled is not None:  # kopf's in-memory bookkeeping of it (.bookkeeping)
            handled.forget(str(body["metadata"]["uid"]))
