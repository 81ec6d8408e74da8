"""Study assembly and durable study state: which studies are complete, which use cases are done.

State lives in the spool's ``state.db`` (see :mod:`pacsflow_router.ingest.spool`), so it survives ``kill -9`` exactly as
the instances do: after a restart every acknowledged study that is not finished is due again, and use cases
already marked done are skipped (:meth:`StudyTracker.is_done`).

Lifecycle of a study
--------------------
receiving -> (no new instance for its window, or its MPPS completed) due -> per use case ``mark_done`` -> ``finish``
(-> a late instance re-opens it -> due again -> amended results -> ``finish``).

Completion
----------
A study is due when its modality's MPPS says it is complete (COMPLETED or DISCONTINUED and every listed instance
spooled: :mod:`pacsflow_router.ingest.completion`), else after its stable window: ``completion.stableSeconds``, or
``stableSecondsByModality`` for the modality of its first instance. :meth:`StudyTracker.completion_reason` says which
rule applied, for the audit.

Restart
-------
Opening the spool restarts the completion window of every unfinished study (``resumed_at``): a crash may have cut a
sender off mid-study, and what it resends then joins the study instead of arriving after a partial result. A study
its MPPS completed is due at once after a restart too: the modality said it was done, and every listed instance is in.
:attr:`StudyRef.last_received` stays the true time of the last instance (time-to-result is measured from it).

Late instances
--------------
An instance that arrives after :meth:`StudyTracker.finish` is acknowledged, kept (flagged ``late``) and re-opens
the study: it is due again once its completion window has passed, with every instance, late ones included. The
pipeline then compares, per use case, the set of instances it would analyse now with the set recorded with the
last result (:meth:`StudyTracker.latest_report`): only a use case whose analysed series changed (or that the
instance newly makes eligible) runs again, and its result is an amendment (revision + 1, an SR that names its
predecessor). A re-sent instance (same SOP Instance UID) is a duplicate, not late: it re-opens nothing.
:meth:`StudyTracker.late_instances` counts late instances so operators can see senders that split studies over time.

An instance that arrives while a due study is being processed (before ``finish``) restarts its stable window, and
:meth:`StudyTracker.finish` with the ``last_received`` the processing started from then leaves the study open: it is
due again and the new instance is covered by an amendment, never silently dropped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from ..domain import StudyRef, study_key
from . import completion
from .spool import Spool

# Unfinished, and silent for its window (the ``{window}`` SQL expression) since the last instance or since the
# restart that resumed it, or completed by its MPPS. ``s`` is the studies table; one parameter: now.
_COMPLETE = ("s.finished_at IS NULL AND (max(s.last_received, coalesce(s.resumed_at, 0)) + {window} <= ? OR "
             + completion.MPPS_COMPLETE + ")")


@dataclass(frozen=True)
class ReportRecord:
    """What a use case's latest result on a study covered, and the SR it sent (None fields: no SR, e.g. silent)."""

    revision: int
    analysed: str
    """Digest of the analysed instances' SOP Instance UIDs."""
    sr_series_uid: str | None
    sr_sop_class_uid: str | None
    sr_sop_uid: str | None


class StudyTracker:
    """Durable per-study state on top of a :class:`~pacsflow_router.ingest.spool.Spool`.

    Parameters
    ----------
    spool
        The spool whose ``state.db`` holds the study tables.
    stable_seconds
        Default completion window (``completion.stableSeconds``) used by :meth:`due` and :meth:`queue_depth`.
    by_modality
        Per-modality windows (``completion.stableSecondsByModality``), by the modality of a study's first instance.
    """

    def __init__(self, spool: Spool, stable_seconds: float = 30.0, *,
                 by_modality: Mapping[str, float] | None = None) -> None:
        self.spool = spool
        self.stable_seconds = stable_seconds
        self.by_modality: dict[str, float] = dict(by_modality or {})
        completion.ensure_schema(spool)

    def window(self, modality: str | None) -> float:
        """The stable window of a study of ``modality`` (the default when it has no window of its own)."""
        return self.by_modality.get(modality or "", self.stable_seconds)

    def _window_sql(self, stable_seconds: float | None) -> tuple[str, tuple[object, ...]]:
        # The SQL expression of a study's completion window (``s`` the studies table) and its parameters.
        if stable_seconds is not None or not self.by_modality:
            return "?", (self.stable_seconds if stable_seconds is None else stable_seconds,)
        cases = " ".join("WHEN ? THEN ?" for _ in self.by_modality)
        params = tuple(v for item in self.by_modality.items() for v in item)
        return f"(CASE s.modality {cases} ELSE ? END)", (*params, self.stable_seconds)

    def _complete(self, stable_seconds: float | None) -> tuple[str, tuple[object, ...]]:
        # The WHERE clause of complete studies and its parameters before "now".
        window, params = self._window_sql(stable_seconds)
        return _COMPLETE.format(window=window), params

    def due(self, now: float | None = None, stable_seconds: float | None = None) -> list[StudyRef]:
        """Studies that are complete (completed by their MPPS, or silent for their window) and not finished, oldest
        first.

        Parameters
        ----------
        now
            Wall-clock time (``time.time()``; the study clock must survive restarts, so not monotonic).
        stable_seconds
            One window for every study, overriding the per-modality ones (``0``: every study received so far);
            default: each study's own window (:meth:`window`).

        Returns
        -------
        list of StudyRef
            Each with the study's instance paths in arrival order. A study stays due until
            :meth:`finish`, so a caller that is still processing one must skip it itself.
        """
        now = time.time() if now is None else now
        where, params = self._complete(stable_seconds)
        studies = self.spool.execute(
            f"SELECT s.study_uid, s.last_received FROM studies s WHERE {where} ORDER BY s.last_received",
            (*params, now))
        refs = []
        # Acknowledged instances the write-ahead checkpointer has not indexed yet: their study is still arriving.
        arriving = self.spool.pending_studies()
        for study_uid, last_received in studies:
            if study_uid in arriving:
                continue
            # Late instances included: a re-opened study is analysed with everything received.
            rows = self.spool.execute(
                "SELECT path FROM instances WHERE study_uid = ? ORDER BY id", (study_uid,))
            paths = tuple(str(self.spool.instance_dir / name) for (name,) in rows)
            refs.append(StudyRef(study_uid=study_uid, key=study_key(study_uid), paths=paths,
                                 last_received=last_received))
        return refs

    def is_done(self, study_uid: str, use_case: str) -> bool:
        """Whether ``use_case`` already has its one result for the study."""
        return bool(self.spool.execute(
            "SELECT 1 FROM results WHERE study_uid = ? AND use_case = ?", (study_uid, use_case)))

    def mark_done(self, study_uid: str, use_case: str, outcome: str, *, replace: bool = False) -> bool:
        """Record the result of ``use_case`` for the study (idempotent: the first outcome wins).

        Parameters
        ----------
        replace
            Overwrite an earlier outcome (a re-opened study's new result, e.g. an amendment).

        Returns
        -------
        bool
            True if this call recorded it, False if it was already recorded (and ``replace`` is false).
        """
        conflict = "DO UPDATE SET outcome = excluded.outcome, done_at = excluded.done_at" if replace else "DO NOTHING"
        with self.spool.transaction() as db:
            cur = db.execute(
                "INSERT INTO results (study_uid, use_case, outcome, done_at) VALUES (?, ?, ?, ?) "
                f"ON CONFLICT (study_uid, use_case) {conflict}", (study_uid, use_case, outcome, time.time()))
            return cur.rowcount == 1

    def latest_report(self, study_uid: str, use_case: str) -> ReportRecord | None:
        """The latest analysed result of ``use_case`` on the study (None: it was never analysed)."""
        rows = self.spool.execute(
            "SELECT revision, analysed, sr_series_uid, sr_sop_class_uid, sr_sop_uid FROM reports "
            "WHERE study_uid = ? AND use_case = ? ORDER BY revision DESC LIMIT 1", (study_uid, use_case))
        return ReportRecord(*rows[0]) if rows else None

    def record_report(self, study_uid: str, use_case: str, record: ReportRecord) -> bool:
        """Remember what a result covered and which SR it sent (idempotent per revision: the first one wins).

        Returns
        -------
        bool
            True if recorded now, False if this revision was already recorded (a repeat after a crash).
        """
        with self.spool.transaction() as db:
            cur = db.execute(
                "INSERT INTO reports (study_uid, use_case, revision, analysed, sr_series_uid, sr_sop_class_uid, "
                "sr_sop_uid, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (study_uid, use_case, revision) DO NOTHING",
                (study_uid, use_case, record.revision, record.analysed, record.sr_series_uid,
                 record.sr_sop_class_uid, record.sr_sop_uid, time.time()))
            return cur.rowcount == 1

    def outcome(self, study_uid: str, use_case: str) -> str | None:
        """The recorded outcome of ``use_case`` for the study, or None."""
        rows = self.spool.execute(
            "SELECT outcome FROM results WHERE study_uid = ? AND use_case = ?", (study_uid, use_case))
        return rows[0][0] if rows else None

    def finish(self, study_uid: str, last_received: float | None = None) -> bool:
        """Mark the study finished: every use case is done; it leaves :meth:`due` until a late instance arrives.

        Parameters
        ----------
        last_received
            The :attr:`StudyRef.last_received` the processing started from. When an instance arrived since, the
            study stays open (it is due again after its window, and the result is amended to cover it).

        Returns
        -------
        bool
            True when the study is finished now (False: already finished, or newer instances keep it open).
        """
        guard = "" if last_received is None else " AND last_received <= ?"
        params: tuple[object, ...] = (time.time(), study_uid) if last_received is None else (
            time.time(), study_uid, last_received)
        with self.spool.transaction() as db:
            cur = db.execute(f"UPDATE studies SET finished_at = ? WHERE study_uid = ? AND finished_at IS NULL{guard}",
                             params)
            return cur.rowcount == 1

    def is_finished(self, study_uid: str) -> bool:
        """Whether :meth:`finish` was called for the study."""
        rows = self.spool.execute("SELECT finished_at FROM studies WHERE study_uid = ?", (study_uid,))
        return bool(rows) and rows[0][0] is not None

    def in_progress(self) -> int:
        """Studies acknowledged and not finished (receiving, waiting or being processed): a gauge."""
        return cast(int, self.spool.execute("SELECT count(*) FROM studies WHERE finished_at IS NULL")[0][0])

    def queue_depth(self, now: float | None = None) -> int:
        """Complete studies waiting for (or in) processing, each with its own window: a gauge."""
        now = time.time() if now is None else now
        where, params = self._complete(None)
        return cast(int, self.spool.execute(f"SELECT count(*) FROM studies s WHERE {where}", (*params, now))[0][0])

    def completion_reason(self, study_uid: str) -> str:
        """Why the study is complete, for its audit record: ``"mpps-completed"``, ``"mpps-discontinued"``,
        ``"mpps-incomplete: N listed instance(s) never arrived"``, ``"stable-window"`` (no MPPS) or
        ``"stable-window: <why the MPPS did not complete it>"`` (see :func:`.completion.completion_reason`)."""
        return completion.completion_reason(self.spool, study_uid)

    def late_instances(self) -> int:
        """Instances that arrived after their study was finished (each re-opened it)."""
        return cast(int, self.spool.execute("SELECT count(*) FROM instances WHERE late = 1")[0][0])

    def next_due_at(self, now: float | None = None) -> float | None:
        """When the next receiving study's completion window ends (wall clock); None when no study is waiting for one.

        The pipeline sleeps until then rather than polling, so a study is taken the moment it becomes complete.
        """
        now = time.time() if now is None else now
        window, params = self._window_sql(None)
        since = "max(s.last_received, coalesce(s.resumed_at, 0))"
        rows = self.spool.execute(
            f"SELECT min({since} + {window}) FROM studies s WHERE s.finished_at IS NULL AND {since} + {window} > ?",
            (*params, *params, now))
        value = rows[0][0]
        return None if value is None else float(value)

    def arrivals(self, after_id: int = 0, limit: int = 256) -> list[tuple[int, str, str]]:
        """Instances spooled after ``after_id`` (the index's row id) whose study is not finished, oldest first.

        Returns
        -------
        list of (int, str, str)
            (row id, Study Instance UID, file path as in :attr:`StudyRef.paths`): what a decoder that works ahead
            of completion reads (``pacsflow_router.predecode``); ingest itself never waits for it.
        """
        rows = self.spool.execute(
            "SELECT i.id, i.study_uid, i.path FROM instances i JOIN studies s ON s.study_uid = i.study_uid "
            "WHERE i.id > ? AND s.finished_at IS NULL ORDER BY i.id LIMIT ?", (after_id, limit))
        return [(int(row_id), study_uid, str(self.spool.instance_dir / name)) for row_id, study_uid, name in rows]
