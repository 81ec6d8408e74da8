"""The audit trail of every AI interaction, append-only, in any SQLAlchemy database (SQLite by default).

Two tables of the results store (:mod:`.schema`; Alembic-migrated to head on open by :func:`.store.upgrade`), written
with SQLAlchemy Core so the same code runs on SQLite and PostgreSQL:

``audit_results``
    One row per study, use case and model (name, version), whatever the mode: what the AI concluded (probability,
    critical flag), what the router did with it (outcome: ``reported``, ``reported-critical``, ``logged-silent``,
    ``error: <reason>``), timings, and where the SR was queued. A unique constraint on (study key, use case, model
    name, model version, revision) makes a reprocess after a crash a no-op instead of a second record.
    ``revision`` is 0 for the first result; a late instance that changes the analysed series adds revision 1, 2, ...
    whose ``amends_sr_key`` is the ``sr_key`` of the SR it amends (keys are :func:`~.domain.study_key` hashes of the
    SRs' SOP Instance UIDs: the link is auditable without putting UIDs in the audit store).
``audit_events``
    Delivery updates (``delivered``, ``retrying``, ``failed`` per destination), appended as new rows. Nothing is
    ever UPDATEd or DELETEd through this module; the current destination status of a result is its latest event.

Studies are identified by :func:`~.domain.study_key` (a hash), never by UID, name or ID: the audit store may be
read by people who must not see patient data.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from . import chain
from .schema import EVENTS, METADATA, RESULTS
from .store import open_engine, upgrade

__all__ = ["EVENTS", "METADATA", "RESULTS", "AuditLog"]

log = logging.getLogger(__name__)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class AuditLog:
    """Append-only audit store at a SQLAlchemy URL.

    Parameters
    ----------
    url : str
        ``sqlite:////abs/path/audit.db`` (parent directory created), ``sqlite://`` (in memory) or
        ``postgresql://...``.
    """

    def __init__(self, url: str) -> None:
        self.engine = open_engine(url)
        # A database an older pacsflow wrote is migrated in place, keeping its rows (store.upgrade).
        upgrade(self.engine)

    def record_result(
        self,
        *,
        study_key: str,
        use_case: str,
        mode: str,
        model_name: str,
        model_version: int,
        probability: float | None,
        critical: bool,
        outcome: str,
        timings: dict[str, float],
        destination: str | None = None,
        destination_status: str | None = None,
        revision: int = 0,
        sr_key: str | None = None,
        amends_sr_key: str | None = None,
        selection: str | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> bool:
        """Append the one result record of a study, use case and revision.

        ``revision`` counts amendments (0: the first result); ``sr_key`` identifies the SR sent with this record and
        ``amends_sr_key`` the one it amends (both hashed SOP Instance UIDs, never the UIDs themselves).
        ``selection`` says which series was analysed and why, or why none was (acceptance criteria; no UIDs).
        ``inputs`` says how many images of the series were analysed of how many, and which instances were skipped
        and why (:meth:`pacsflow_router.domain.Series.inputs`; hashed instance keys, no UIDs).

        Returns
        -------
        bool
            True when written; False when this (study, use case, model, version, revision) already has its record (a
            reprocess after a crash), in which case nothing changes.
        """
        row = {
            "recorded_at": _now(), "study_key": study_key, "use_case": use_case, "mode": mode,
            "model_name": model_name, "model_version": int(model_version),
            "probability": None if probability is None else float(probability), "critical": bool(critical),
            "outcome": outcome[:255], "timings": {k: round(float(v), 6) for k, v in timings.items()},
            "destination": destination, "destination_status": destination_status,
            "revision": int(revision), "sr_key": sr_key, "amends_sr_key": amends_sr_key,
            "selection": None if selection is None else selection[:1024],
            "inputs": inputs,
        }
        try:
            with self.engine.begin() as conn:
                row_id = conn.execute(insert(RESULTS).values(**row).returning(RESULTS.c.id)).scalar_one()
                chain.append(conn, "ai-result", actor=model_name, subject=study_key,
                             outcome="failure" if outcome.startswith("error") else "success",
                             detail={"use_case": use_case, "model_version": int(model_version), "mode": mode},
                             covers=("audit_results", row_id, row))
        except IntegrityError:
            log.info("audit: study %s use case %s already recorded for %s v%s (revision %d); keeping the first record",
                     study_key, use_case, model_name, model_version, revision)
            return False
        return True

    def record_delivery(
        self, *, study_key: str, use_case: str | None, destination: str, outcome: str, detail: str | None = None,
        sr_key: str | None = None,
    ) -> None:
        """Append a delivery event (``delivered``, ``retrying``, ``failed``) for a study's result.

        ``sr_key`` (the delivered SR's hashed SOP Instance UID) ties the event to one revision of the result.
        """
        with self.engine.begin() as conn:
            conn.execute(insert(EVENTS).values(
                recorded_at=_now(), study_key=study_key, use_case=use_case, destination=destination,
                outcome=outcome, detail=None if detail is None else detail[:1024], sr_key=sr_key,
            ))

    def record_study_received(self, study_key: str, *, instances: int, completion: object = None) -> None:
        """Chain a ``study-received`` record: a complete study (``instances`` spooled files) goes to analysis."""
        chain.record(self.engine, "study-received", actor="dicom", subject=study_key,
                     detail={"instances": int(instances), "completion": None if completion is None else str(completion)})

    def record_refusal(self, refusal: Any) -> None:
        """Chain an ``association-refused`` record for a refused connection or association: the DICOM receiver's,
        the HL7 listener's and the metrics endpoint's ``on_refused`` (:class:`~pacsflow_router.admission.Refusal`;
        AE titles, addresses, certificate names, never patient data)."""
        chain.record(self.engine, "association-refused", actor=str(refusal.peer), subject=str(refusal.listener),
                     outcome="failure", detail={"reason": refusal.reason, "detail": str(refusal.detail)[:1024],
                                                "calling_ae_title": refusal.calling_ae_title,
                                                "certificate": refusal.certificate})

    def record_mode_changes(self, old: Any, new: Any) -> int:
        """Chain a ``promotion`` record for each use case whose mode changed between two routing configs (a
        promotion or a step back, as the operator rendered it); returns how many."""
        before = {u.name: u.mode for u in old.use_cases}
        changed = [u for u in new.use_cases if u.name in before and before[u.name] != u.mode]
        try:
            with self.engine.begin() as conn:
                for use_case in changed:
                    chain.append(conn, "promotion", actor="routing-config", subject=use_case.name,
                                 detail={"from": before[use_case.name], "to": use_case.mode,
                                         "model": use_case.model.name, "model_version": use_case.model.version})
        except SQLAlchemyError as exc:
            # The reload is applied either way (the operator already changed the mode); a store that is down must
            # not leave the router half-reloaded. The operator's status.modeHistory still has the change.
            log.error("audit: mode change(s) of %s not recorded, the results store failed: %s",
                      ", ".join(u.name for u in changed), type(exc).__name__)
            return 0
        return len(changed)

    def records(self, *, study_key: str | None = None, use_case: str | None = None) -> list[dict[str, Any]]:
        """Result records (oldest first), each with its ``deliveries`` (events, oldest first) and the current
        ``destination_status`` (the latest event's outcome, else the status recorded with the result)."""
        query = select(RESULTS).order_by(RESULTS.c.id)
        events = select(EVENTS).order_by(EVENTS.c.id)
        if study_key is not None:
            query = query.where(RESULTS.c.study_key == study_key)
            events = events.where(EVENTS.c.study_key == study_key)
        if use_case is not None:
            query = query.where(RESULTS.c.use_case == use_case)
            events = events.where(EVENTS.c.use_case == use_case)
        with self.engine.connect() as conn:
            results = [dict(r._mapping) for r in conn.execute(query)]
            deliveries = [dict(e._mapping) for e in conn.execute(events)]
        for record in results:
            mine = [e for e in deliveries
                    if e["study_key"] == record["study_key"] and e["use_case"] == record["use_case"]
                    and e["destination"] == record["destination"]
                    # An amended result has its own SR: its events are the ones for that SR.
                    and (e["sr_key"] is None or record["sr_key"] is None or e["sr_key"] == record["sr_key"])]
            record["deliveries"] = mine
            if mine:
                record["destination_status"] = mine[-1]["outcome"]
        return results

    def events(self, *, study_key: str | None = None) -> list[dict[str, Any]]:
        """Delivery events (oldest first)."""
        query = select(EVENTS).order_by(EVENTS.c.id)
        if study_key is not None:
            query = query.where(EVENTS.c.study_key == study_key)
        with self.engine.connect() as conn:
            return [dict(e._mapping) for e in conn.execute(query)]

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()
