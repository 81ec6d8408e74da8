"""What to reconcile when something changes, with bursts coalesced and renders serialised per object.

Every render reads kopf's in-memory indexes (fed by the watches, updated before any handler runs for an
event), so reconciling a router with 200 use cases costs no list request. Renders of one router are
serialised by a lock and coalesced: a handler that waited for the lock while another render already
saw its change skips its own, so a burst of use-case edits costs one ConfigMap write, and the last
write always comes from the newest index state (no lost update).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import kopf
from pydantic import BaseModel, ValidationError

from .. import API_VERSION
from ..errors import InvalidSpecError, KubeApiError
from ..evidence import EvidenceSource
from ..evidence import evidence as evidence_of
from ..health import deployment_available, model_version_ready
from ..kube import Kube
from ..metrics import RECONCILE_DURATION, RECONCILIATIONS
from ..reconcile import router as router_rc
from ..reconcile import triton as triton_rc
from ..reconcile.conditions import Cond, merge_conditions, ready
from ..reconcile.usecase import Binding, use_case_status
from ..resources.v1alpha1 import AIUseCaseSpec, DicomRouterSpec, TritonClusterSpec
from ..settings import OperatorSettings

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
Entry = dict[str, Any]  # one indexed object (see .indexes)
SpecT = TypeVar("SpecT", bound=BaseModel)
T = TypeVar("T")
ModelKey = tuple[str, str, str, int]  # (namespace, TritonCluster, model, version)


@contextmanager
def outcome(kind: str) -> Iterator[None]:
    """Count and time one reconciliation; map domain errors to kopf's (the one translation table)."""
    start = time.perf_counter()
    result = "error"
    try:
        yield
        result = "success"
    except InvalidSpecError as exc:
        result = "invalid"
        raise kopf.PermanentError(str(exc)) from None
    except KubeApiError as exc:
        result = "retry"
        raise kopf.TemporaryError(str(exc), delay=10) from None
    finally:
        RECONCILIATIONS.labels(kind=kind, outcome=result).inc()
        RECONCILE_DURATION.labels(kind=kind).observe(time.perf_counter() - start)


def parse_spec(model: type[SpecT], spec: Mapping[str, Any], what: str) -> SpecT:
    """Validate a stored spec with its model; the API server already checked the schema, so a failure
    here means the operator and the CRD disagree (or a CEL-free field rule failed)."""
    try:
        return model.model_validate(dict(spec))
    except ValidationError as exc:
        raise InvalidSpecError(f"{what}: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None


def owner(kind: str, namespace: str, name: str, uid: str) -> dict[str, Any]:
    """A minimal owner body for :func:`kopf.adopt`."""
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": {"name": name, "namespace": namespace, "uid": uid}}


@dataclass
class _Serial:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    requested: int = 0
    done: int = 0
    # Settling requests not yet covered by a render: when the first arrived and when the last did.
    pending_since: float | None = None
    last_request: float = 0.0


class Controller:
    """Holds the API client, per-object serialisation and the cache of what was last written.

    Parameters
    ----------
    kube
        API access.
    settings
        Operator settings (default images).
    evidence_source
        Counts of reviewed cases per use case and model version, written into ``status.evidence``; ``None``
        leaves ``status.evidence`` to whoever writes it (tests, a separate job).
    """

    def __init__(self, kube: Kube, settings: OperatorSettings, evidence_source: EvidenceSource | None = None) -> None:
        self.kube = kube
        self.settings = settings
        self.evidence_source = evidence_source
        self._serial: dict[tuple[str, str, str], _Serial] = defaultdict(_Serial)
        # Last manifest this process applied per child: unchanged children are not re-sent on use-case
        # edits. The object's own create/update/resume handler passes force=True and re-applies all.
        self._applied: dict[tuple[str, str, str], str] = {}
        # Last status this process wrote per object, with the resourceVersion the write produced: the base
        # for the next status when the watch has not delivered that write yet (modeHistory must not lose
        # an entry because two writes came faster than the watch).
        self._written: dict[tuple[str, str, str], tuple[int, dict[str, Any]]] = {}
        self._status_locks: dict[tuple[str, str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._owned: dict[tuple[str, str, str], set[tuple[str, str, str]]] = defaultdict(set)
        # Each router's DeploymentAvailable condition as last read (see sync_router's check_deployment).
        self._deployment: dict[tuple[str, str, str], Cond] = {}
        # What each TritonCluster's Triton last answered per pinned model version, and when it was asked: the
        # use cases' ModelAvailable reads this; the probes run in their own two threads so an unreachable Triton
        # never holds up the API calls in the default pool.
        self.model_ready: dict[ModelKey, bool | None] = {}
        self._probed_at: dict[ModelKey, float] = {}
        self._probe_locks: dict[ModelKey, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._probe_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="triton-probe")

    async def _apply_all(self, children: list[dict[str, Any]], namespace: str, owner_body: dict[str, Any],
                         force: bool) -> int:
        owned = self._owned[(owner_body["kind"], namespace, owner_body["metadata"]["name"])]
        written = 0
        for child in children:
            child = copy.deepcopy(child)
            if router_rc.RETAIN_ANNOTATION not in child["metadata"].get("annotations", {}):
                # kopf.adopt reads the owner as a plain mapping; its annotation names kopf's Body view of one.
                kopf.adopt(child, owner=owner_body)  # type: ignore[arg-type]
            key = (child["kind"], namespace, child["metadata"]["name"])
            digest = json.dumps(child, sort_keys=True)
            if not force and self._applied.get(key) == digest:
                continue
            await asyncio.to_thread(self.kube.apply, child, namespace)
            self._applied[key] = digest
            owned.add(key)
            written += 1
        return written

    def base_status(self, kind: str, namespace: str, entry: Mapping[str, Any]) -> dict[str, Any]:
        """The freshest status known for an indexed object: the index's, or our own newer write."""
        written = self._written.get((kind, namespace, entry["name"]))
        if written is not None and written[0] > _rv(entry):
            return written[1]
        return dict(entry["status"])

    async def _patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any],
                            base: Mapping[str, Any]) -> bool:
        """Write ``status`` unless ``base`` (the freshest known status) already says the same."""
        if {k: base.get(k) for k in status} == status:
            return False
        stored = await asyncio.to_thread(self.kube.patch_status, kind, namespace, name, status)
        if stored is not None:
            self._written[(kind, namespace, name)] = (_rv(stored["metadata"]), dict(stored.get("status") or {}))
        return True

    async def _serialised(self, key: tuple[str, str, str], force: bool, work: Callable[[], Awaitable[T]],
                          settle: float = 0.0, settle_max: float | None = None) -> T | None:
        """Run ``work`` for ``key`` one at a time, coalescing requests that a later run covers.

        A settling request (``settle`` > 0, not ``force``) waits until no new settling request came for
        ``settle`` s, or until ``settle_max`` s (default ``settle``) after the first uncovered one: a burst is
        rendered once per quiet moment, and at least every ``settle_max`` s while it lasts.
        """
        state = self._serial[key]
        state.requested += 1
        mine = state.requested
        if settle > 0 and not force:
            loop = asyncio.get_running_loop()
            state.last_request = loop.time()
            if state.pending_since is None:
                state.pending_since = state.last_request
            longest = settle if settle_max is None else max(settle, settle_max)
            while state.done < mine and state.pending_since is not None:
                due = min(state.last_request + settle, state.pending_since + longest)
                if loop.time() >= due:
                    break
                await asyncio.sleep(due - loop.time())
        async with state.lock:
            if not force and state.done >= mine:
                return None  # a render that started after our change was indexed already covered it
            snapshot = state.requested
            state.pending_since = None  # every request so far is covered by this run
            result = await work()
            state.done = snapshot
            return result

    # --------------------------------------------------------------------------------- routers
    async def sync_router(self, namespace: str, name: str, idx: Indexes, *, force: bool = False,
                          settle: float = 0.0, settle_max: float | None = None,
                          check_deployment: bool = False) -> router_rc.RouterPlan | None:
        """Render and apply one DicomRouter's children and status from the current indexes.

        Parameters
        ----------
        force
            Re-apply every child (the router's own create/update/resume); also re-reads its Deployment.
        check_deployment
            Re-read the Deployment's availability (the health timer); otherwise a render for a use case reuses
            the last answer, so a burst of use cases costs no GET per render.
        settle, settle_max
            A new use case's render waits until no other one came for ``settle`` s, or at most ``settle_max`` s
            while a burst goes on (200 use cases applied at once cost one render per router per quiet moment,
            not one per use case). Edits pass 0: a mode change or a kill switch reaches the ConfigMap at once
            (and carries any creation still settling).

        Returns
        -------
        RouterPlan or None
            ``None`` when the router does not exist or a concurrent render already covered this change.
        """
        async def work() -> router_rc.RouterPlan | None:
            entry = idx.router(namespace, name)
            if entry is None:
                return None
            with outcome("DicomRouter"):
                spec = parse_spec(DicomRouterSpec, entry["spec"], f"DicomRouter {name}")
                use_cases = idx.use_case_specs(namespace, name)
                triton_exists = (idx.triton(namespace, spec.triton_cluster) is not None
                                 if spec.triton_cluster else None)
                # In a thread: rendering YAML for a router with many use cases takes tens of ms of CPU, and
                # on the event loop that would stall every other object's handlers and watches.
                plan = await asyncio.to_thread(
                    router_rc.render_router, name, namespace, spec, use_cases,
                    image=self.settings.router_image, triton_cluster_exists=triton_exists,
                )
                written = await self._apply_all(plan.children, namespace,
                                                owner("DicomRouter", namespace, name, entry["uid"]), force)
                # Ready means the router runs: its Deployment is available, not merely applied. Read when the
                # router itself changed and on the health timer; a use case's render reuses the last answer.
                deployment = router_rc.deployment_name(name)
                key = ("DicomRouter", namespace, name)
                if force or check_deployment or key not in self._deployment:
                    found = await asyncio.to_thread(self.kube.get, "Deployment", namespace, deployment)
                    self._deployment[key] = deployment_available(found, deployment)
                conds = [c for c in plan.conditions if c.type != "Ready"] + [self._deployment[key]]
                conds.insert(0, ready(conds, f"Deployment {deployment} available with {len(plan.accepted)} use case(s)"))
                base = self.base_status("DicomRouter", namespace, entry)
                status = {
                    "observedGeneration": entry["generation"],
                    "conditions": merge_conditions(base.get("conditions"), conds, entry["generation"]),
                    "useCases": len(plan.accepted),
                    "configMap": router_rc.config_map_name(name),
                }
                await self._patch_status("DicomRouter", namespace, name, status, base)
                log.info("DicomRouter %s/%s: %d use case(s), %d object(s) written", namespace, name,
                         len(plan.accepted), written)
                return plan

        return await self._serialised(("DicomRouter", namespace, name), force, work, settle, settle_max)

    # --------------------------------------------------------------------------------- tritons
    async def sync_triton(self, namespace: str, name: str, idx: Indexes, *, force: bool = False) -> None:
        """Render and apply one TritonCluster's children and status from the current indexes."""
        async def work() -> None:
            entry = idx.triton(namespace, name)
            if entry is None:
                return
            with outcome("TritonCluster"):
                spec = parse_spec(TritonClusterSpec, entry["spec"], f"TritonCluster {name}")
                use_cases: dict[str, AIUseCaseSpec] = {}
                for router_name in idx.routers_of_triton(namespace, name):
                    use_cases.update(idx.use_case_specs(namespace, router_name))
                plan = triton_rc.render_triton(name, spec, use_cases, render_image=self.settings.router_image,
                                               operator_namespace=self.settings.namespace)
                await self._apply_all(plan.children, namespace,
                                      owner("TritonCluster", namespace, name, entry["uid"]), force)
                base = self.base_status("TritonCluster", namespace, entry)
                status = {
                    "observedGeneration": entry["generation"],
                    "conditions": merge_conditions(base.get("conditions"), plan.conditions, entry["generation"]),
                    "models": plan.models,
                }
                await self._patch_status("TritonCluster", namespace, name, status, base)

        await self._serialised(("TritonCluster", namespace, name), force, work)

    # ------------------------------------------------------------------------------ model probes
    async def probe_model(self, namespace: str, cluster: str, model: str, version: int, max_age: float) -> bool | None:
        """Ask the TritonCluster's Triton whether ``model`` ``version`` is READY (at most once per ``max_age`` s).

        Triton is asked at ``settings.triton_url`` when set (an operator outside the cluster), else at the
        cluster's Service. The answer is kept in :attr:`model_ready` for the use cases' ``ModelAvailable``.
        """
        key = (namespace, cluster, model, version)
        async with self._probe_locks[key]:
            if time.monotonic() - self._probed_at.get(key, float("-inf")) < max_age:
                return self.model_ready.get(key)
            url = self.settings.triton_url or router_rc.triton_url(cluster, namespace)
            answer = await asyncio.get_running_loop().run_in_executor(
                self._probe_pool, model_version_ready, url, model, version)
            self.model_ready[key] = answer
            self._probed_at[key] = time.monotonic()
            return answer

    # ------------------------------------------------------------------------------- use cases
    def use_case_status(self, namespace: str, name: str, spec: AIUseCaseSpec, generation: int | None,
                        stored: Mapping[str, Any] | None, idx: Indexes,
                        plan: router_rc.RouterPlan | None,
                        annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The status one AIUseCase should have now (pure apart from reading the indexes)."""
        router_entry = idx.router(namespace, spec.router)
        router_spec = None
        triton_exists = None
        model_ready = None
        rejected = None
        if router_entry is not None:
            try:
                router_spec = DicomRouterSpec.model_validate(dict(router_entry["spec"]))
            except ValidationError:
                router_spec = None
            if router_spec is not None and router_spec.triton_cluster:
                triton_exists = idx.triton(namespace, router_spec.triton_cluster) is not None
                model_ready = self.model_ready.get(
                    (namespace, router_spec.triton_cluster, spec.model.name, spec.model.version))
            if plan is not None and name not in plan.rejected and name not in plan.accepted:
                plan = None  # rendered before this use case was indexed: its verdict is not in the plan
            if plan is None and router_spec is not None:
                # Not rendered by this handler (coalesced): recompute the rejection, which is pure and cheap.
                _, rejected_map = router_rc.routing_config(spec.router, namespace, router_spec, {name: spec})
                rejected = rejected_map.get(name)
            elif plan is not None:
                rejected = plan.rejected.get(name)
        fresh = None
        if self.evidence_source is not None:
            counts = self.evidence_source(namespace, name, spec.model.version)
            fresh = evidence_of(counts, spec.model.version) if counts is not None else None
        return use_case_status(namespace, spec, generation, stored,
                               Binding(router_spec, triton_exists, rejected, model_ready),
                               annotations=annotations, evidence=fresh)

    async def write_use_case_status(self, namespace: str, router: str, name: str, idx: Indexes,
                                    plan: router_rc.RouterPlan | None) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Compute one AIUseCase's status from the indexes *now* and write it if it changed.

        Every writer of a use case's status (its own handler, its router's, its Triton cluster's) comes
        through here, one at a time per use case, so the last write is always computed from the newest
        state: a handler that computed earlier can never overwrite a newer verdict.

        Returns
        -------
        tuple of dict or None
            (status before, status after), or None when the use case is not (or no longer) indexed.
        """
        key = ("AIUseCase", namespace, name)
        async with self._status_locks[key]:
            entry = idx.use_cases(namespace, router).get(name)
            if entry is None:
                return None
            try:
                spec = use_case_spec(entry)
            except ValidationError:
                return None
            base = self.base_status("AIUseCase", namespace, entry)
            status = self.use_case_status(namespace, name, spec, entry["generation"], base, idx, plan,
                                          entry.get("annotations"))
            await self._patch_status("AIUseCase", namespace, name, status, base)
            return base, status

    async def refresh_use_cases(self, namespace: str, router_name: str, idx: Indexes,
                                plan: router_rc.RouterPlan | None) -> None:
        """Re-write the status of every use case bound to a router (after the router or its Triton changed)."""
        for uc_name in idx.use_cases(namespace, router_name):
            await self.write_use_case_status(namespace, router_name, uc_name, idx, plan)

    def close(self) -> None:
        """Release the API connection pool and the Triton probes' threads."""
        self.kube.close()
        self._probe_pool.shutdown(wait=False, cancel_futures=True)

    def forget(self, kind: str, namespace: str, name: str) -> None:
        """Drop the caches of a deleted object, so one re-created with the same name is written in full."""
        for child in self._owned.pop((kind, namespace, name), ()):
            self._applied.pop(child, None)
        self._written.pop((kind, namespace, name), None)
        self._deployment.pop((kind, namespace, name), None)
        self._status_locks.pop((kind, namespace, name), None)


def _rv(meta: Mapping[str, Any]) -> int:
    # resourceVersion is opaque by contract but is etcd's revision (an increasing integer) in every
    # Kubernetes release; it is only used to prefer the newer of two known statuses.
    try:
        return int(meta.get("resourceVersion") or 0)
    except ValueError:
        return 0



class Indexes:
    """Read access to kopf's indexes (see :mod:`.indexes`), by namespace and name."""

    def __init__(self, routers: kopf.Index[Key, Entry], tritons: kopf.Index[Key, Entry],
                 use_cases_by_router: kopf.Index[Key, Entry]) -> None:
        self._routers = routers
        self._tritons = tritons
        self._ucs = use_cases_by_router

    @staticmethod
    def _one(index: kopf.Index[Key, Entry], key: Key) -> dict[str, Any] | None:
        store = index.get(key)
        if not store:
            return None
        return next(iter(store))

    def router(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Indexed DicomRouter (uid, generation, spec, status) or None."""
        return self._one(self._routers, (namespace, name))

    def triton(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Indexed TritonCluster or None."""
        return self._one(self._tritons, (namespace, name))

    def use_cases(self, namespace: str, router: str) -> dict[str, dict[str, Any]]:
        """Indexed AIUseCases bound to a router, by name."""
        return {e["name"]: e for e in self._ucs.get((namespace, router), ())}

    def use_case_specs(self, namespace: str, router: str) -> dict[str, AIUseCaseSpec]:
        """Valid specs of the AIUseCases bound to a router, by name."""
        out = {}
        for uc_name, entry in self.use_cases(namespace, router).items():
            try:
                out[uc_name] = use_case_spec(entry)
            except ValidationError:
                log.warning("AIUseCase %s/%s has a spec the operator cannot read; left out", namespace, uc_name)
        return out

    def routers_of_triton(self, namespace: str, triton: str) -> list[str]:
        """Names of the DicomRouters whose spec.tritonCluster is ``triton``."""
        return sorted(
            key[1] for key, store in self._routers.items()
            if key[0] == namespace and any(e["spec"].get("tritonCluster") == triton for e in store)
        )


# Parsed AIUseCase specs by (uid, generation): the spec of one generation never changes, and every render of a
# router parses all of its use cases (a burst of 40 creations parsed the first ones 40 times).
_SPECS: dict[tuple[str, int], AIUseCaseSpec] = {}
_SPECS_LIMIT = 10_000


def use_case_spec(entry: Mapping[str, Any]) -> AIUseCaseSpec:
    """The indexed AIUseCase's spec, parsed (raises pydantic's ValidationError when it cannot be read)."""
    generation = entry.get("generation")
    if generation is None:
        return AIUseCaseSpec.model_validate(dict(entry["spec"]))
    key = (str(entry["uid"]), int(generation))
    spec = _SPECS.get(key)
    if spec is None:
        spec = AIUseCaseSpec.model_validate(dict(entry["spec"]))
        if len(_SPECS) >= _SPECS_LIMIT:
            _SPECS.clear()
        _SPECS[key] = spec
    return spec
