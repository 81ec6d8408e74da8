"""The accepted draft report out as HL7 ORU^R01 (result status P), once, after a reader accepted the result.

pacsflow-api renders the draft text (its per-use-case template) when a reader accepts a result and stores that text
in the results store (``draft_reports``). The router polls (:class:`DraftSender`): for a use case that lists
``draft-report`` in ``outputs.hl7.messages`` and is in assistive or triage mode it queues an ORU^R01 (one TX OBX per
line, OBR-25 and every OBX-11 ``P``) through the durable outbox and marks the row ``queued``; any other is marked
``not-sent`` (a silent use case never sends anything; enabling ``draft-report`` later does not send old accepts).
MSH-10 is derived from (study, use case, revision), so a repeat after a crash between queueing and marking is the same
outbox item; a second reader's accept of the same revision stores nothing (the first one's text is the one sent).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from ..config import RoutingConfig, UseCase
from ..domain import Order, study_key
from ..results.approvals import Approvals
from ..results.export import Outbox
from .alerts import Sender, draft_report
from .orders import OrderStore

log = logging.getLogger(__name__)


def sends_drafts(use_case: UseCase) -> bool:
    """Whether accepted drafts of ``use_case`` go out as HL7 (``draft-report`` listed, assistive or triage mode)."""
    hl7 = use_case.outputs.hl7
    return use_case.mode != "silent" and hl7 is not None and "draft-report" in hl7.messages


class DraftSender:
    """Queues accepted drafts as ORU^R01 (call :meth:`poll` repeatedly).

    Parameters
    ----------
    approvals : Approvals
        The results store's accepted drafts (and the reviewed results they state).
    outbox : Outbox
        Where the ORU is queued.
    orders : OrderStore, optional
        The study's order (placer/filler numbers, procedure code) when there is one.
    """

    def __init__(self, approvals: Approvals, outbox: Outbox, orders: OrderStore | None = None) -> None:
        self.approvals = approvals
        self.outbox = outbox
        self.orders = orders

    def poll(self, config: RoutingConfig) -> int:
        """Queue or pass over every accepted draft once; returns how many ORUs were queued now."""
        queued = 0
        for row in self.approvals.accepted_drafts():
            use_case = next((u for u in config.use_cases if u.name == row["use_case"]), None)
            if use_case is None:
                continue  # another router's use case: left to it
            facts = self.approvals.reviewed_result(row["result_key"], row["revision"])
            if facts is None or not sends_drafts(use_case):
                self.approvals.complete_draft(row["result_key"], row["revision"], state="not-sent")
                continue
            if self._queue(config, use_case, row, facts):
                queued += 1
            self.approvals.complete_draft(row["result_key"], row["revision"], state="queued")
        return queued

    def _queue(self, config: RoutingConfig, use_case: UseCase, row: dict[str, Any], facts: dict[str, Any]) -> bool:
        assert use_case.outputs.hl7 is not None  # sends_drafts
        destination = config.hl7_destination(use_case.outputs.hl7.destination)
        order = None
        if self.orders is not None:
            order = self.orders.find_for_study(facts["study_uid"], facts["accession"], facts["patient_id"])
        if order is None:
            order = Order(accession=facts["accession"], patient_id=facts["patient_id"],
                          patient_name=facts["patient_name"], study_uid=facts["study_uid"],
                          procedure_description=facts["procedure"], source="dicom")
        listener = config.hl7_listener
        sender = Sender(listener.application, listener.facility) if listener is not None else Sender()
        control_id, message = draft_report(facts["study_uid"], use_case.name, row["revision"], row["text"], order,
                                           destination, sender=sender, at=dt.datetime.now(dt.UTC))
        key = study_key(facts["study_uid"])
        done = self.outbox.enqueue_message("hl7", destination.name, control_id, message, kind="draft-report",
                                           study_key=key, use_case=use_case.name)
        log.info("study %s (%s): accepted draft %s for %s", key, use_case.name,
                 "queued" if done else "was queued before", destination.name)
        return done
