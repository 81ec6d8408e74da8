"""Held critical outputs and accepted drafts in the results store, shared by the router and pacsflow-api.

The router and the API are separate processes; these two tables are how they hand work to each other:

- ``approvals``: the router holds a critical result's worklist flag, HL7 messages and webhooks (``hold``) when its
  use case sets ``triage.requireApproval``; the API records a reader's decision (``decide``: approve or reject, who,
  their role, when); the router polls the decided ones (``decided``), releases or drops the outputs and marks the row
  ``released`` or ``dropped`` (``complete``).
- ``draft_reports``: the API stores the draft text of a result a reader accepted (``record_draft``); the router
  polls them (``accepted_drafts``), queues the ORU^R01 or not and marks each ``queued`` or ``not-sent``.

Every state change is a guarded UPDATE (``WHERE state = ...``), so two API replicas deciding at once leave one
decision, and a router that repeats a poll after a crash changes nothing twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from . import chain
from .schema import APPROVALS, DRAFT_REPORTS, REVIEW_RESULTS

#: A decision and the states that mean it was taken (``released``/``dropped``: the router has acted on it).
DECIDED = {"approve": ("approved", "released"), "reject": ("rejected", "dropped")}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)  # SQLite hands back naive UTC


@dataclass(frozen=True)
class Decision:
    """What :meth:`Approvals.decide` found or did."""

    outcome: str
    """``decided`` (now), ``unchanged`` (the same decision was taken before), ``conflict`` (the other decision was
    taken before) or ``none`` (no output of this result is held)."""
    state: str | None
    decided_by: str | None
    decided_at: dt.datetime | None


class Approvals:
    """The ``approvals`` and ``draft_reports`` tables of one results store (already migrated to head).

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
        The results store's engine (``ResultsStore.engine``).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _insert(self, table: Any) -> Any:
        return (postgresql if self.engine.dialect.name == "postgresql" else sqlite).insert(table)

    # -- approvals --------------------------------------------------------------------------------------------------
    def hold(self, *, result_key: str, revision: int, study_key: str, use_case: str, held: dict[str, Any]) -> bool:
        """Hold one result revision's critical outputs until a decision; a repeat (a reprocess) is a no-op.

        An amendment of a result whose earlier revision was approved carries that approval over (its outputs are the
        same messages); after a rejection the amendment waits for a reader again.

        Returns
        -------
        bool
            True when held now, False when this revision was held before.
        """
        a = APPROVALS.c
        row: dict[str, Any] = {"result_key": result_key, "revision": revision, "study_key": study_key,
                               "use_case": use_case, "state": "pending", "requested_at": _now(), "held": held}
        with self.engine.begin() as conn:
            earlier = conn.execute(select(a.revision, a.state, a.decided_by, a.decided_role, a.decided_at).where(
                a.result_key == result_key, a.revision < revision).order_by(a.revision.desc()).limit(1)).first()
            if earlier is not None and earlier.state in DECIDED["approve"]:
                # An amendment of an approved result: its outputs are the same messages (keys per study, use case and
                # kind), out already; asking a reader again would only add noise. A rejected one is asked again.
                row.update(state="approved", decided_by=earlier.decided_by, decided_role=earlier.decided_role,
                           decided_at=earlier.decided_at, comment=f"approval of revision {earlier.revision}")
            statement = self._insert(APPROVALS).values(**row).on_conflict_do_nothing(
                index_elements=["result_key", "revision"]).returning(a.revision)
            return conn.execute(statement).first() is not None

    def decide(self, result_key: str, *, approve: bool, by: str, role: str, comment: str | None = None) -> Decision:
        """Approve or reject the held outputs of a result (every pending revision of it).

        A repeat of the same decision changes nothing (``unchanged``); the other decision after one was taken is a
        ``conflict``: the first reader's decision stands (the outputs may be out already).
        """
        a = APPROVALS.c
        decision = "approve" if approve else "reject"
        at = _now()
        with self.engine.begin() as conn:
            done = conn.execute(update(APPROVALS).where(a.result_key == result_key, a.state == "pending").values(
                state=DECIDED[decision][0], decided_by=by, decided_role=role, decided_at=at, comment=comment)).rowcount
            if done:
                chain.append(conn, "approval", actor=by, subject=result_key,
                             detail={"decision": decision, "role": role, "revisions": int(done)})
                return Decision("decided", DECIDED[decision][0], by, at)
            row = conn.execute(select(a.state, a.decided_by, a.decided_at).where(a.result_key == result_key)
                               .order_by(a.revision.desc()).limit(1)).first()
        if row is None:
            return Decision("none", None, None, None)
        outcome = "unchanged" if row.state in DECIDED[decision] else "conflict"
        return Decision(outcome, row.state, row.decided_by, _utc(row.decided_at) if row.decided_at else None)

    def state(self, result_key: str) -> dict[str, Any] | None:
        """The latest revision's approval row of a result (without ``held``); None when nothing was held."""
        columns = [c for c in APPROVALS.c if c.name != "held"]
        with self.engine.connect() as conn:
            row = conn.execute(select(*columns).where(APPROVALS.c.result_key == result_key)
                               .order_by(APPROVALS.c.revision.desc()).limit(1)).first()
        return None if row is None else dict(row._mapping)

    def decided(self) -> list[dict[str, Any]]:
        """Approved and rejected rows the router has not acted on yet, oldest decision first."""
        a = APPROVALS.c
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(APPROVALS).where(a.state.in_(("approved", "rejected"))).order_by(a.decided_at))]

    def complete(self, result_key: str, revision: int, *, state: str) -> bool:
        """Mark a decided row ``released`` (from approved) or ``dropped`` (from rejected, or an approval the router
        could not act on); False when it was marked before."""
        a = APPROVALS.c
        before = ("approved",) if state == "released" else ("approved", "rejected")
        with self.engine.begin() as conn:
            return bool(conn.execute(update(APPROVALS).where(
                a.result_key == result_key, a.revision == revision, a.state.in_(before)).values(
                state=state, completed_at=_now())).rowcount == 1)

    def pending(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """Pending approvals (without ``held``), oldest first."""
        columns = [c for c in APPROVALS.c if c.name != "held"]
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(*columns).where(APPROVALS.c.state == "pending").order_by(APPROVALS.c.requested_at)
                .limit(limit))]

    def pending_results(self, *, limit: int = 50) -> list[dict[str, Any]]:
        """Pending approvals with the result they hold (tracking UID, study, use case, when requested), oldest
        first: what the API lists for readers."""
        a, r = APPROVALS.c, REVIEW_RESULTS.c
        query = (select(r.tracking_uid, r.study_uid, a.use_case, a.revision, a.requested_at)
                 .select_from(APPROVALS.join(REVIEW_RESULTS, (a.result_key == r.result_key)
                                             & (a.revision == r.revision)))
                 .where(a.state == "pending").order_by(a.requested_at, a.result_key).limit(limit))
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def pending_by_use_case(self) -> dict[str, tuple[int, dt.datetime]]:
        """Per use case: how many approvals are pending and when the oldest was requested."""
        a = APPROVALS.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(a.use_case, func.count(), func.min(a.requested_at))
                                .where(a.state == "pending").group_by(a.use_case)).all()
        return {use_case: (int(count), _utc(oldest)) for use_case, count, oldest in rows}

    # -- accepted drafts --------------------------------------------------------------------------------------------
    def record_draft(self, *, result_key: str, revision: int, use_case: str, text: str, by: str) -> bool:
        """Store the draft text of an accepted result revision; False when one was stored before (the first accept
        is the one sent)."""
        statement = self._insert(DRAFT_REPORTS).values(
            result_key=result_key, revision=revision, use_case=use_case, text=text, accepted_by=by,
            accepted_at=_now(), state="accepted").on_conflict_do_nothing(index_elements=["result_key", "revision"]
                                                                         ).returning(DRAFT_REPORTS.c.revision)
        with self.engine.begin() as conn:
            return conn.execute(statement).first() is not None

    def accepted_drafts(self) -> list[dict[str, Any]]:
        """Drafts the router has not queued or passed over yet, oldest first."""
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(DRAFT_REPORTS).where(DRAFT_REPORTS.c.state == "accepted")
                .order_by(DRAFT_REPORTS.c.accepted_at))]

    def drafts(self) -> list[dict[str, Any]]:
        """Every draft row, oldest first."""
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                select(DRAFT_REPORTS).order_by(DRAFT_REPORTS.c.accepted_at))]

    def complete_draft(self, result_key: str, revision: int, *, state: str) -> bool:
        """Mark an accepted draft ``queued`` or ``not-sent``; False when it was marked before."""
        d = DRAFT_REPORTS.c
        with self.engine.begin() as conn:
            return bool(conn.execute(update(DRAFT_REPORTS).where(
                d.result_key == result_key, d.revision == revision, d.state == "accepted").values(
                state=state, completed_at=_now())).rowcount == 1)

    def reviewed_result(self, result_key: str, revision: int) -> dict[str, Any] | None:
        """The ``review_results`` facts of a result revision a draft states (study, patient, accession, procedure,
        mode), without the key image; None when unknown."""
        r = REVIEW_RESULTS.c
        with self.engine.connect() as conn:
            row = conn.execute(select(r.study_uid, r.accession, r.patient_id, r.patient_name, r.procedure, r.mode,
                                      r.use_case).where(r.result_key == result_key, r.revision == revision)).first()
        return None if row is None else dict(row._mapping)
