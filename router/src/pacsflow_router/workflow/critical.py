"""A critical triage result reaches the worklist: HL7 order update and alert, webhooks, the order's AI flag.

The pipeline calls :func:`send_critical` only past its mode gate (triage mode, at or above the critical threshold:
``pipeline.is_critical``); silent and assistive results never get here. Everything goes through the durable outbox
with keys derived from (study, use case, message kind), so a re-run of the study (a crash, a late instance) queues
nothing new and the receivers see each message once.

The study's order comes from the order store (by Study Instance UID, else accession + patient ID). A study without
one still gets the ORU alert and the webhooks, stated with the images' own patient and accession attributes; it gets
no order update (there is no order for the RIS to update) and no worklist flag.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from pydicom.dataset import Dataset

from ..config import RoutingConfig, UseCase
from ..domain import Order
from ..results.export import Outbox, Outgoing
from .alerts import Coded, CriticalResult, Sender, hl7_message, idempotency_key, webhook_body
from .orders import OrderStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CriticalFinding:
    """What the pipeline concluded (the manifest's codes, the model's version string, the SR it queued)."""

    probability: float
    finding: Coded
    procedure: Coded
    model_version: str
    sr_sop_uid: str | None


def order_from_header(header: Dataset) -> Order:
    """An order-like record of a study that has no order: patient and accession from its first image's header."""
    def text(keyword: str) -> str:
        value = header.get(keyword)
        return "" if value is None else str(value)

    return Order(accession=text("AccessionNumber"), patient_id=text("PatientID"), patient_name=text("PatientName"),
                 patient_birth_date=text("PatientBirthDate"), patient_sex=text("PatientSex"),
                 study_uid=text("StudyInstanceUID"), modality=text("Modality"),
                 procedure_description=text("StudyDescription"), source="dicom")


def send_critical(outbox: Outbox, config: RoutingConfig, use_case: UseCase, *, study_key: str, header: Dataset,
                  result: CriticalFinding, order: Order | None = None, orders: OrderStore | None = None,
                  last_received: float | None = None, at: dt.datetime | None = None) -> list[str]:
    """Queue the use case's HL7 messages and webhooks for a critical result and flag its order on the worklist.

    Parameters
    ----------
    outbox : Outbox
        Where the messages are queued (durably, once per key).
    config : RoutingConfig
        HL7 destinations, webhooks, and the listener's MSH-3/4 identity.
    use_case : UseCase
        A triage use case; ``outputs.hl7.messages`` and ``outputs.webhooks`` say what goes where.
    study_key : str
        The study's non-identifying key (logs, audit).
    header : pydicom.Dataset
        The study's first instance header (Study Instance UID; patient data for a study without an order).
    result : CriticalFinding
        The finding.
    order : domain.Order, optional
        The study's order when the caller already has it; else looked up in ``orders``.
    orders : OrderStore, optional
        The order store (lookup and :meth:`~.orders.OrderStore.mark_ai_critical`).
    last_received : float, optional
        Carried to the outbox items (time-to-alert).
    at : datetime, optional
        Message time (MSH-7); now when unset.

    Returns
    -------
    list of str
        What was queued now or flagged, e.g. ``["hl7:ris:order-update", "hl7:ris:alert", "webhook:sectra",
        "worklist"]`` (a repeat returns what is new only).
    """
    at = dt.datetime.now(dt.UTC) if at is None else at
    study_uid = str(header.StudyInstanceUID)
    if order is None and orders is not None:
        order = orders.find_for_study(study_uid, str(header.get("AccessionNumber", "") or ""),
                                      str(header.get("PatientID", "") or ""))
    critical = CriticalResult(
        study_uid=study_uid, use_case=use_case.name, mode=use_case.mode, probability=result.probability,
        finding=result.finding, procedure=result.procedure, model_name=use_case.model.name,
        model_version=result.model_version, sr_sop_uid=result.sr_sop_uid or "",
        order=order if order is not None else order_from_header(header),
    )
    listener = config.hl7_listener
    sender = Sender(listener.application, listener.facility) if listener is not None else Sender()
    # Every message in one durable enqueue (one commit): the order update does not wait for the others' fsyncs.
    queued: list[tuple[str, Outgoing]] = []
    hl7 = use_case.outputs.hl7
    if hl7 is not None:
        destination = config.hl7_destination(hl7.destination)
        for kind in hl7.messages:
            if kind == "draft-report":
                continue  # sent after a reader accepts the result (workflow/drafts.py), not on the finding
            if kind == "order-update" and order is None:
                log.info("study %s (%s): no order, so no order update to %s", study_key, use_case.name,
                         destination.name)
                continue
            control_id, message = hl7_message(kind, critical, destination, sender=sender, at=at)
            queued.append((f"hl7:{destination.name}:{kind}", Outgoing(
                "hl7", destination.name, control_id, message, kind=kind, study_key=study_key, use_case=use_case.name,
                last_received=last_received)))
    if use_case.outputs.webhooks:
        body = webhook_body(critical)
        key = idempotency_key(study_uid, use_case.name)
        for name in use_case.outputs.webhooks:
            queued.append((f"webhook:{name}", Outgoing("webhook", name, key, body, kind="webhook", study_key=study_key,
                                                       use_case=use_case.name, last_received=last_received)))
    new = outbox.enqueue_messages([item for _, item in queued]) if queued else []
    done = [label for (label, _), is_new in zip(queued, new, strict=True) if is_new]
    if order is not None and orders is not None and orders.mark_ai_critical(order, use_case.name, at.timestamp()):
        done.append("worklist")
    return done
