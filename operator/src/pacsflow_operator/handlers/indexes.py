"""kopf in-memory indexes of the three kinds, so reconciles read bindings without list requests.

kopf updates indexes before it calls any handler for the same event and starts handlers only once
every index is populated, so a render never sees a half-listed namespace. The three kinds are
namespaced, so kopf always passes a ``namespace`` (typed optional for cluster-scoped kinds).
"""

from __future__ import annotations

from typing import Any

import kopf

from .. import GROUP, VERSION
from ..promotion import CHANGED_BY_ANNOTATION, OVERRIDE_ANNOTATION

# Return {} (not None) to drop an object: kopf keeps the previous value when an indexer returns None.
_GONE: dict[tuple[str, str], Any] = {}


def _entry(name: str, body: Any) -> dict[str, Any]:
    return {
        "name": name,
        "uid": body["metadata"]["uid"],
        "resourceVersion": body["metadata"].get("resourceVersion"),
        "generation": body["metadata"].get("generation"),
        "spec": dict(body.get("spec", {})),
        "status": dict(body.get("status", {}) or {}),
        # Only the annotations status.modeHistory records (not kopf's bookkeeping, which changes on every handling).
        "annotations": {k: v for k, v in (body["metadata"].get("annotations") or {}).items()
                        if k in (CHANGED_BY_ANNOTATION, OVERRIDE_ANNOTATION)},
    }


@kopf.index(GROUP, VERSION, "dicomrouters")
def routers(namespace: str | None, name: str, body: Any, meta: Any, **_: Any) -> dict[tuple[str, str], Any]:
    """(namespace, name) -> DicomRouter (a router being deleted counts as gone)."""
    assert namespace is not None
    if meta.get("deletionTimestamp"):
        return _GONE
    return {(namespace, name): _entry(name, body)}


@kopf.index(GROUP, VERSION, "tritonclusters")
def tritons(namespace: str | None, name: str, body: Any, meta: Any, **_: Any) -> dict[tuple[str, str], Any]:
    """(namespace, name) -> TritonCluster."""
    assert namespace is not None
    if meta.get("deletionTimestamp"):
        return _GONE
    return {(namespace, name): _entry(name, body)}


@kopf.index(GROUP, VERSION, "aiusecases")
def use_cases_by_router(
    namespace: str | None, name: str, body: Any, meta: Any, spec: Any, **_: Any
) -> dict[tuple[str, str], Any]:
    """(namespace, router name) -> AIUseCases bound to it. A use case being deleted is already left out,
    so the render its delete handler triggers drops it from the routing config."""
    assert namespace is not None
    if meta.get("deletionTimestamp") or not spec.get("router"):
        return _GONE
    return {(namespace, spec["router"]): _entry(name, body)}
