"""The mode gate for every alert channel, through the real pipeline (spool -> embedded ONNX Runtime -> outbox).

One study, three use cases on the same model - silent, assistive, triage - each configured with an HL7 order update,
an HL7 alert and a webhook, and the study's order in the order store. Every threshold is 0, so every result is above
it: only the triage use case may queue the HL7 messages and the webhook and flag the worklist; silent and assistive
must send none of them, channel by channel. The outbox is not started: its queue is what would be delivered
(tests/integration/test_outbound.py delivers such items to real receivers).
"""

from __future__ import annotations

import json
import sqlite3

import hl7
import pytest

from pacsflow_router.analysis.inference import EmbeddedOnnxBackend
from pacsflow_router.domain import Order
from pacsflow_router.models import phantom
from pacsflow_router.workflow import alerts
from pacsflow_router.workflow.orders import OrderStore
from tests.peers.dicomfiles import part10
from tests.peers.inprocess import MODEL_REPOSITORY, in_process_router

MODES = ("silent", "assistive", "triage")
OUTPUTS = {"hl7": {"destination": "ris", "messages": ["order-update", "alert"]}, "webhooks": ["worklist-api"]}
EXTRA = {
    "hl7Destinations": [{"name": "ris", "host": "127.0.0.1", "port": 2575, "version": "2.3.1"}],
    "webhooks": [{"name": "worklist-api", "url": "http://127.0.0.1:9/alerts"}],
    "hl7Listener": {"application": "PACSFLOW_AI", "facility": "RAD"},
}


@pytest.fixture
def router(tmp_path):
    use_cases = [
        {"name": f"ich-{mode}", "model": {"name": "ich_detector", "version": 2}, "mode": mode,
         "match": {"modalities": ["CT"]}, "decisionThreshold": 0.0, "triage": {"criticalThreshold": 0.0},
         "outputs": {"structuredReport": {"destination": "pacs"}, **OUTPUTS}}
        for mode in MODES
    ]
    with in_process_router(tmp_path, use_cases, EmbeddedOnnxBackend(MODEL_REPOSITORY), EXTRA) as r:
        r.pipeline.orders = OrderStore(r.spool, r.audit.engine)
        yield r


def _queued(router) -> list[dict]:
    db = sqlite3.connect(router.outbox.directory / "outbox.db")
    try:
        rows = db.execute("SELECT channel, destination, idempotency_key, kind, use_case, file FROM outbox").fetchall()
    finally:
        db.close()
    return [dict(zip(("channel", "destination", "key", "kind", "use_case", "file"), row, strict=True)) for row in rows]


def _body(router, item: dict) -> bytes:
    return (router.outbox.directory / "items" / item["file"]).read_bytes()


def _study(seed: int):
    datasets, truth = phantom.generate_study(seed, lesion=True, slices=17, rows=256, cols=256)
    return datasets, truth


def test_only_triage_sends_the_order_update_the_alert_the_webhook_and_flags_the_worklist(router):
    datasets, truth = _study(61)
    head = datasets[0]
    order = Order(accession=str(head.AccessionNumber) or "ACC-61", patient_id=str(head.PatientID),
                  study_uid=truth.study_instance_uid, placer_order_number="PL-61", procedure_code="CTHEAD",
                  procedure_description="CT head", modality="CT", priority="R")
    store = router.pipeline.orders
    assert store.upsert(order) == "created"
    for ds in datasets:
        router.spool.store(part10(ds))
    assert router.process_due() == 1

    items = _queued(router)
    by_channel = {(i["channel"], i["kind"] or "", i["use_case"] or "") for i in items}
    # Each mode gets its SR or not as before (silent none); only triage gets anything else.
    assert {(c, k, u) for c, k, u in by_channel if c == "dicom"} == {("dicom", "sr", "ich-assistive"),
                                                                      ("dicom", "sr", "ich-triage")}
    for channel, kind in (("hl7", "order-update"), ("hl7", "alert"), ("webhook", "webhook")):
        senders = {u for c, k, u in by_channel if (c, k) == (channel, kind)}
        assert senders == {"ich-triage"}, f"{channel} {kind}: only triage sends it, got {senders}"
    (entry,) = store.worklist()
    assert entry.ai_critical and entry.ai_use_cases == ("ich-triage",), "worklist flag: triage only"

    # What the triage use case queued says what it should: the order's numbers, STAT, the SR it sent.
    update = next(i for i in items if i["kind"] == "order-update")
    assert update["key"] == alerts.control_id(truth.study_instance_uid, "ich-triage", "order-update")
    msg = hl7.parse(_body(router, update).decode())
    assert str(msg.segment("MSH")(3)) == "PACSFLOW_AI" and str(msg.segment("MSH")(12)) == "2.3.1"
    assert str(msg.segment("ORC")(1)) == "XO" and str(msg.segment("ORC")(7)(1)(6)) == "S"
    assert msg.unescape(str(msg.segment("OBR")(18))) == order.accession
    assert str(msg.segment("OBR")(4)(1)(2)).startswith("[AI: Critical Finding Suspected] ")
    oru = hl7.parse(_body(router, next(i for i in items if i["kind"] == "alert")).decode())
    obx = {str(seg(3)(1)(1)): seg for seg in oru.segments("OBX")}
    assert str(obx["finding"](5)(1)(1)) == "1386000"  # the manifest's finding type (SCT Intracranial hemorrhage)
    triage_srs = [i for i in items if i["channel"] == "dicom" and i["use_case"] == "ich-triage"]
    assert str(obx["sr-uid"](5)) == triage_srs[0]["key"], "the alert names the triage SR queued with it"
    hook = json.loads(_body(router, next(i for i in items if i["channel"] == "webhook")))
    assert hook["useCase"] == "ich-triage" and hook["mode"] == "triage" and hook["accession"] == order.accession
    assert hook["srSopInstanceUid"] == triage_srs[0]["key"] and hook["criticalFindingFlag"] is True

    # The audit says which use case flagged the study critical.
    outcomes = {r["use_case"]: r["outcome"] for r in router.audit.records()}
    assert outcomes == {"ich-silent": "logged-silent", "ich-assistive": "reported", "ich-triage": "reported-critical"}


def test_a_study_without_an_order_gets_the_alert_and_webhook_but_no_order_update(router):
    datasets, truth = _study(62)
    for ds in datasets:
        router.spool.store(part10(ds))
    assert router.process_due() == 1
    kinds = sorted(i["kind"] for i in _queued(router) if i["channel"] != "dicom")
    assert kinds == ["alert", "webhook"]
    assert router.pipeline.orders.worklist() == []
    oru = hl7.parse(_body(router, next(i for i in _queued(router) if i["kind"] == "alert")).decode())
    assert str(oru.segment("PID")(3)) == str(datasets[0].PatientID), "the patient from the images' header"
