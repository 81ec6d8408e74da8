"""Human approval before priority: a critical result's worklist flag, HL7 messages and webhooks wait for a reader.

A use case with ``triage.requireApproval`` does not call :func:`~.critical.send_critical` when its result is
critical. The pipeline calls :func:`hold_critical` instead: one ``approvals`` row in the results store (pending),
holding what ``send_critical`` needs later (the study's header facts, the finding). The SR still goes to the PACS at
once: only the priority is held.

A reader or clinical lead approves or rejects it in pacsflow-api (``POST /api/v1/results/{trackingUID}/approve`` or
``/reject``; who, role and when are stored with the row). The router polls (:class:`ApprovalReleaser`, from its own
thread): an approved row is released through ``send_critical`` (durable outbox, keys per study, use case and message
kind, so a repeat queues nothing new) and marked ``released``; a rejected one is marked ``dropped`` and nothing is
ever sent. Queue first, mark second: a crash in between repeats the release, and the outbox and the order store make
that repeat a no-op. An approval for a use case that is no longer in triage mode (demoted) is dropped: the kill
switch wins; one for a use case this router does not run is left to the router that does (nothing is sent). Both are audited (``audit_events``, destination ``approval``, the decider's key id).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from pydicom.dataset import Dataset

from .. import metrics
from ..config import RoutingConfig, UseCase
from ..results.approvals import Approvals
from ..results.audit import AuditLog
from ..results.export import Outbox
from .alerts import Coded
from .critical import CriticalFinding, send_critical
from .orders import OrderStore

log = logging.getLogger(__name__)

#: The header attributes a held result keeps: what ``send_critical`` reads (the order lookup, and the ORU/webhook of a
#: study without an order).
HEADER_KEYWORDS = ("StudyInstanceUID", "AccessionNumber", "PatientID", "PatientName", "PatientBirthDate",
                   "PatientSex", "Modality", "StudyDescription")


def held_outputs(header: Dataset, result: CriticalFinding, last_received: float | None) -> dict[str, Any]:
    """What :func:`release` needs to send a held result's outputs later (JSON; holds patient data)."""
    return {
        "header": {k: str(header.get(k, "") or "") for k in HEADER_KEYWORDS},
        "probability": result.probability,
        "finding": [result.finding.value, result.finding.scheme, result.finding.meaning],
        "procedure": [result.procedure.value, result.procedure.scheme, result.procedure.meaning],
        "model_version": result.model_version,
        "sr_sop_uid": result.sr_sop_uid,
        "last_received": last_received,
    }


def hold_critical(approvals: Approvals, use_case: UseCase, *, result_key: str, revision: int, study_key: str,
                  header: Dataset, result: CriticalFinding, last_received: float | None = None) -> bool:
    """Hold a critical result's priority outputs for a reader's decision (a repeat is a no-op).

    Returns
    -------
    bool
        True when held now.
    """
    held = approvals.hold(result_key=result_key, revision=revision, study_key=study_key, use_case=use_case.name,
                          held=held_outputs(header, result, last_received))
    if held:
        log.warning("study %s (%s): critical outputs held for approval", study_key, use_case.name)
    return held


def _header(facts: dict[str, str]) -> Dataset:
    ds = Dataset()
    for keyword, value in facts.items():
        setattr(ds, keyword, value)
    return ds


class ApprovalReleaser:
    """Releases approved and drops rejected held outputs; keeps the pending gauges (call :meth:`poll` repeatedly).

    Parameters
    ----------
    approvals : Approvals
        The results store's approvals.
    outbox : Outbox
        Where released messages are queued.
    audit : AuditLog
        Release and drop events.
    orders : OrderStore, optional
        The worklist flag and the order lookup.
    """

    def __init__(self, approvals: Approvals, outbox: Outbox, audit: AuditLog, orders: OrderStore | None = None) -> None:
        self.approvals = approvals
        self.outbox = outbox
        self.audit = audit
        self.orders = orders
        self._gauged: set[str] = set()

    def poll(self, config: RoutingConfig, now: dt.datetime | None = None) -> int:
        """Act on every decided approval once and refresh the gauges; returns how many rows were completed."""
        done = 0
        for row in self.approvals.decided():
            use_case = next((u for u in config.use_cases if u.name == row["use_case"]), None)
            if use_case is None:
                continue  # another router's use case (one store, several routers), or removed: nothing is sent
            if row["state"] == "approved" and use_case.mode == "triage":
                sent = self.release(config, use_case, row)
                if self.approvals.complete(row["result_key"], row["revision"], state="released"):
                    done += 1
                    self._audit(row, "released", ", ".join(sent) or "nothing new")
                continue
            why = "rejected" if row["state"] == "rejected" else "use case no longer in triage mode"
            if self.approvals.complete(row["result_key"], row["revision"], state="dropped"):
                done += 1
                self._audit(row, "dropped", why)
        self.update_gauges(config, now)
        return done

    def release(self, config: RoutingConfig, use_case: UseCase, row: dict[str, Any]) -> list[str]:
        """Queue one approved row's outputs (``send_critical``); what was queued or flagged now."""
        held = row["held"]
        finding = CriticalFinding(float(held["probability"]), Coded(*held["finding"]), Coded(*held["procedure"]),
                                  str(held["model_version"]), held.get("sr_sop_uid"))
        return send_critical(self.outbox, config, use_case, study_key=row["study_key"],
                             header=_header(held["header"]), result=finding, orders=self.orders,
                             last_received=held.get("last_received"))

    def _audit(self, row: dict[str, Any], outcome: str, detail: str) -> None:
        who = f"{row['state']} by {row.get('decided_by') or '-'} ({row.get('decided_role') or '-'})"
        self.audit.record_delivery(study_key=row["study_key"], use_case=row["use_case"], destination="approval",
                                   outcome=outcome, detail=f"{who}: {detail}")
        log.info("study %s (%s): held critical outputs %s (%s)", row["study_key"], row["use_case"], outcome, who)

    def update_gauges(self, config: RoutingConfig, now: dt.datetime | None = None) -> None:
        """``pacsflow_approvals_pending`` and ``pacsflow_approval_oldest_age_seconds`` per use case."""
        now = dt.datetime.now(dt.UTC) if now is None else now
        pending = self.approvals.pending_by_use_case()
        names = {u.name for u in config.use_cases if u.triage.require_approval} | set(pending) | self._gauged
        for name in names:
            count, oldest = pending.get(name, (0, None))
            metrics.APPROVALS_PENDING.labels(name).set(count)
            metrics.APPROVAL_OLDEST_AGE.labels(name).set(max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
        self._gauged = names
