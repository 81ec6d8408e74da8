"""kopf's bookkeeping: AIUseCases handled with no PATCH (state in memory), other kinds still in annotations."""

from __future__ import annotations

import datetime

import kopf

from pacsflow_operator.handlers.bookkeeping import HandledEssence, HandlerProgress

PREFIX = "pacsflow.io"


def _body(kind: str, uid: str = "u-1", **annotations: str) -> kopf.Body:
    return kopf.Body({
        "apiVersion": "pacsflow.io/v1alpha1", "kind": kind,
        "metadata": {"name": "x", "namespace": "ns", "uid": uid, "annotations": annotations},
        "spec": {"router": "r", "mode": "silent"},
        "status": {"observedGeneration": 1},
    })


def _record() -> dict:
    now = datetime.datetime.now(datetime.UTC).isoformat()
    return {"started": now, "stopped": now, "retries": 1, "success": True, "failure": False, "delayed": None,
            "purpose": "create", "message": None, "subrefs": None}


def test_use_case_state_stays_in_memory_and_costs_no_patch():
    essence_store, progress = HandledEssence(PREFIX, "last-handled-configuration"), HandlerProgress(PREFIX)
    body, patch = _body("AIUseCase"), kopf.Patch()
    assert essence_store.fetch(body=body) is None  # never handled: kopf's create
    essence = essence_store.build(body=body)
    progress.store(key="use_case_changed", record=_record(), body=body, patch=patch)
    assert progress.fetch(key="use_case_changed", body=body)["success"] is True
    progress.purge(key="use_case_changed", body=body, patch=patch)
    essence_store.store(body=body, patch=patch, essence=essence)
    assert not patch, "no request for kopf's bookkeeping of a use case"
    assert essence_store.fetch(body=body) == {"spec": {"router": "r", "mode": "silent"}}
    assert progress.fetch(key="use_case_changed", body=body) is None
    # Another object with another uid has its own state; a forgotten one is new again.
    assert essence_store.fetch(body=_body("AIUseCase", uid="u-2")) is None
    essence_store.forget("u-1")
    assert essence_store.fetch(body=body) is None


def test_pacsflow_annotations_are_not_part_of_a_use_cases_essence():
    essence_store = HandledEssence(PREFIX, "last-handled-configuration")
    plain = essence_store.build(body=_body("AIUseCase"))
    annotated = essence_store.build(body=_body("AIUseCase", **{"pacsflow.io/changed-by": "alice", "team": "ed"}))
    assert annotated == {**plain, "metadata": {"annotations": {"team": "ed"}}}


def test_routers_keep_kopfs_annotations_and_a_retry_still_touches_the_object():
    essence_store, progress = HandledEssence(PREFIX, "last-handled-configuration"), HandlerProgress(PREFIX)
    router, patch = _body("DicomRouter"), kopf.Patch()
    essence_store.store(body=router, patch=patch, essence=essence_store.build(body=router))
    assert f"{PREFIX}/last-handled-configuration" in patch["metadata"]["annotations"]
    # The wake-up of a delayed handler is a real write for every kind: it is the event that runs it again.
    touch = kopf.Patch()
    progress.touch(body=_body("AIUseCase"), patch=touch, value="2026-01-01T00:00:00")
    assert touch["metadata"]["annotations"][f"{PREFIX}/touch-dummy"] == "2026-01-01T00:00:00"
