"""Where kopf keeps what it handled: AIUseCases in this process's memory, the other kinds in annotations.

kopf stores two things per object: the last handled essence (the base of ``old``/``new``/``diff`` for the
update handlers) and each handler's progress (retries, delays). In annotations, each costs a PATCH per handled
change, and that PATCH is one more watch event for every watcher (kopf itself, the garbage collector): for a
burst of 200 new AIUseCases, 200 requests out of about 800 (``python -m bench operator``). The operator is a
single replica, so for AIUseCases both live in memory instead; only a retry's wake-up (kopf's "touch") still
writes an annotation, because that write is the event that wakes the handler again.

What a restart loses, and why that is safe: without a stored essence kopf sees every AIUseCase as new, so its
create handler renders it again from the indexes (the same render a resume would do, now with no write when
nothing changed); an edit made while the operator was down is rendered and recorded in ``status.modeHistory``
like any other, only without the ``ModeChanged`` Event (no ``old`` to compare). DicomRouters and TritonClusters
(a handful per cluster) keep kopf's annotations, so their resume handlers still tell a restart from a creation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import kopf

from .. import GROUP

IN_MEMORY_KINDS = frozenset({"AIUseCase"})
"""Kinds whose handled state lives in memory (everything else keeps kopf's annotations)."""


def _in_memory(body: Any) -> bool:
    return bool(body.get("kind") in IN_MEMORY_KINDS and str(body.get("apiVersion", "")).startswith(f"{GROUP}/"))


def _uid(body: Any) -> str:
    return str(body["metadata"]["uid"])


class HandledEssence(kopf.DiffBaseStorage):
    """The last handled essence: in memory for :data:`IN_MEMORY_KINDS`, else in ``<prefix>/<key>``.

    Parameters
    ----------
    prefix, key
        Annotation naming for the kinds kept in annotations (kopf's :class:`kopf.AnnotationsDiffBaseStorage`).
    """

    def __init__(self, prefix: str, key: str) -> None:
        super().__init__()
        self.prefix = prefix
        self._annotations = kopf.AnnotationsDiffBaseStorage(prefix=prefix, key=key)
        self._memory: dict[str, Any] = {}

    def build(self, *, body: Any, extra_fields: Iterable[Any] | None = None) -> Any:
        if not _in_memory(body):
            return self._annotations.build(body=body, extra_fields=extra_fields)
        essence = super().build(body=body, extra_fields=extra_fields)
        # As with annotations (where kopf's marker hides the whole prefix): pacsflow's own annotations are not
        # part of the essence, so a changed-by or override annotation alone is not an update.
        annotations = essence.get("metadata", {}).get("annotations", {})
        for name in [a for a in annotations if a.startswith(f"{self.prefix}/")]:
            del annotations[name]
        self.remove_empty_stanzas(essence)
        return essence

    def fetch(self, *, body: Any) -> Any:
        if not _in_memory(body):
            return self._annotations.fetch(body=body)
        stored = self._memory.get(_uid(body))
        return copy.deepcopy(stored) if stored is not None else None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        if not _in_memory(body):
            self._annotations.store(body=body, patch=patch, essence=essence)
            return
        self._memory[_uid(body)] = copy.deepcopy(essence)

    def forget(self, uid: str) -> None:
        """Drop a deleted object's essence."""
        self._memory.pop(uid, None)


class HandlerProgress(kopf.ProgressStorage):
    """Handlers' progress: in memory for :data:`IN_MEMORY_KINDS`, else kopf's annotations under ``prefix``.

    A retry's wake-up (``touch``) is written as an annotation for every kind: that write is the watch event that
    makes kopf run the delayed handler again.
    """

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self._annotations = kopf.AnnotationsProgressStorage(prefix=prefix)
        self._memory: dict[str, dict[str, Any]] = {}

    def fetch(self, *, key: Any, body: Any) -> Any:
        if not _in_memory(body):
            return self._annotations.fetch(key=key, body=body)
        record = self._memory.get(_uid(body), {}).get(key)
        return dict(record) if record is not None else None

    def store(self, *, key: Any, record: Any, body: Any, patch: Any) -> None:
        if not _in_memory(body):
            self._annotations.store(key=key, record=record, body=body, patch=patch)
            return
        self._memory.setdefault(_uid(body), {})[key] = dict(record)

    def purge(self, *, key: Any, body: Any, patch: Any) -> None:
        if not _in_memory(body):
            self._annotations.purge(key=key, body=body, patch=patch)
            return
        records = self._memory.get(_uid(body))
        if records is not None:
            records.pop(key, None)
            if not records:
                del self._memory[_uid(body)]

    def touch(self, *, body: Any, patch: Any, value: str | None) -> None:
        self._annotations.touch(body=body, patch=patch, value=value)

    def clear(self, *, essence: Any) -> Any:
        return self._annotations.clear(essence=essence)

    def forget(self, uid: str) -> None:
        """Drop a deleted object's progress."""
        self._memory.pop(uid, None)
