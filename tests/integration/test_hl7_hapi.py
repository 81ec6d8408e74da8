"""pacsflow's HL7 v2 edges against HAPI HL7v2 2.6.0 (Java), the independent peer (``make hl7-peer``).

Orders in: HAPI's client sends ORM^O01 (v2.3, v2.3.1) and OMI^O23 (v2.5.1) to pacsflow's MLLP listener and parses
the ACKs it gets back; the order store is read to see what was kept. Messages out: the order update and the ORU
alert that pacsflow builds go through pacsflow's own MLLP sender to HAPI's receiver, which parses and validates them
against HAPI's model of each structure and answers AE for a wrong one; deliveries are counted at that receiver.
"""

from __future__ import annotations

import datetime as dt

import pytest

from pacsflow_router.config import Hl7Destination
from pacsflow_router.config import Hl7Listener as Hl7ListenerConfig
from pacsflow_router.domain import Order
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.results.export import Message
from pacsflow_router.workflow import alerts
from pacsflow_router.workflow.listener import Hl7Listener
from pacsflow_router.workflow.orders import OrderStore
from pacsflow_router.workflow.senders import MllpSender
from tests.peers.hapi import HapiReceiver, send
from tests.peers.hl7msgs import OrderMessage
from tests.peers.net import free_port

KINDS = ["orm23", "orm231", "omi251"]


@pytest.fixture
def pacsflow(tmp_path):
    """pacsflow's HL7 listener on a free loopback port over a fresh spool; yields (listener, store)."""
    store = OrderStore(Spool(tmp_path / "spool"))
    listener = Hl7Listener(Hl7ListenerConfig(port=free_port()), store)
    listener.start()
    try:
        yield listener, store
    finally:
        listener.stop()


# -- orders in: HAPI sends, pacsflow stores ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_hapi_order_is_acknowledged_and_stored_with_its_fields(pacsflow, kind):
    listener, store = pacsflow
    msg = OrderMessage(control_id=f"C-{kind}", accession=f"A-{kind}")

    (ack,) = send(listener.port, [msg.encoded(kind)])

    # HAPI parsed pacsflow's ACK to read these.
    assert (ack["ack"], ack["controlId"], ack["error"]) == ("AA", f"C-{kind}", None)
    order = store.get(f"A-{kind}", "PID0001")
    assert order is not None
    assert (order.status, order.priority, order.patient_class, order.modality) == ("scheduled", "S", "E", "CT")
    assert order.study_uid == msg.study_uid
    assert (order.procedure_code, order.procedure_description, order.procedure_scheme) == (
        "CTHEADWO", "CT head without contrast", "L")
    assert order.requested_procedure_id == "RP0001"
    assert order.location.startswith("ED")
    # UTF-8 by MSH-18, escapes (\T\ \F\) decoded.
    assert order.patient_name == "Núñez-Šimić^José"
    assert order.reason == "Fall & headache | GCS 13"
    assert store.count() == 1


def test_latin1_order_is_stored_decoded(pacsflow):
    listener, store = pacsflow
    msg = OrderMessage(control_id="C-L1", charset="8859/1", family="Müller-Lüdenscheid", given="Zoë")

    (ack,) = send(listener.port, [msg.encoded("orm23")])

    assert ack["ack"] == "AA"
    order = store.get("ACC0001", "PID0001")
    assert order is not None and order.patient_name == "Müller-Lüdenscheid^Zoë"


def test_duplicate_control_id_gets_the_same_ack_and_creates_nothing(pacsflow):
    listener, store = pacsflow
    first = OrderMessage(control_id="C-DUP", priority="S")
    # Same MSH-10, other content: a resend is recognised by its control ID alone and changes nothing.
    resend = first.replace(priority="R", accession="ACC-OTHER")

    acks = send(listener.port, [first.encoded("orm23"), first.encoded("orm23"), resend.encoded("orm23")])

    assert [a["ack"] for a in acks] == ["AA", "AA", "AA"]
    assert acks[1] == {**acks[0], "file": acks[1]["file"]}
    assert acks[2] == {**acks[0], "file": acks[2]["file"]}
    assert store.count() == 1
    stored = store.get("ACC0001", "PID0001")
    assert stored is not None and stored.priority == "S"
    assert store.get("ACC-OTHER", "PID0001") is None


def test_order_lifecycle_from_hapi(pacsflow):
    listener, store = pacsflow
    base = OrderMessage(priority="R")
    placed = send(listener.port, [base.replace(control_id="C-NW").encoded("omi251"),
                                  base.replace(control_id="C-XO", order_control="XO", priority="S").encoded("omi251")])

    assert [a["ack"] for a in placed] == ["AA", "AA"]
    order = store.get("ACC0001", "PID0001")
    assert order is not None and (order.status, order.priority) == ("scheduled", "S")

    (cancelled,) = send(listener.port, [base.replace(control_id="C-CA", order_control="CA").encoded("omi251")])

    assert cancelled["ack"] == "AA"
    order = store.get("ACC0001", "PID0001")
    assert order is not None and order.status == "cancelled"
    assert store.count() == 1


def test_change_to_unknown_order_gets_ae_with_err(pacsflow):
    listener, store = pacsflow
    xo = OrderMessage(control_id="C-XO-UNKNOWN", order_control="XO", accession="NEVER-ORDERED")

    (ack,) = send(listener.port, [xo.encoded("orm231")])

    assert (ack["ack"], ack["controlId"]) == ("AE", "C-XO-UNKNOWN")
    assert ack["error"] and ack["error"].startswith("ERR")
    assert store.count() == 0


def test_orders_from_one_hapi_connection_are_each_stored_once(pacsflow):
    listener, store = pacsflow
    messages = [OrderMessage(control_id=f"C-{i}", accession=f"A-{i}").encoded(KINDS[i % 3]) for i in range(12)]

    acks = send(listener.port, messages)

    assert [a["controlId"] for a in acks] == [f"C-{i}" for i in range(12)]
    assert {a["ack"] for a in acks} == {"AA"}
    assert store.count() == 12


# -- messages out: pacsflow sends, HAPI parses and validates ---------------------------------------------------------


def _critical_result() -> alerts.CriticalResult:
    order = Order(accession="ACC0001", patient_id="PID0001", placer_order_number="PLC0001",
                  filler_order_number="FIL0001", study_uid="1.2.826.0.1.3680043.8.498.1",
                  requested_procedure_id="RP0001", modality="CT", procedure_code="CTHEADWO", procedure_scheme="L",
                  procedure_description="CT head without contrast", priority="R", patient_class="E",
                  location="ED", reason="Fall & headache", patient_name="Núñez-Šimić^José",
                  patient_birth_date="19560412", patient_sex="M")
    return alerts.CriticalResult(
        study_uid=order.study_uid, use_case="ich-triage", mode="triage", probability=0.97,
        finding=alerts.Coded("50960005", "SCT", "Hemorrhage"),
        procedure=alerts.Coded("24727-0", "LN", "CT Head WO contrast"),
        model_name="ich_detector", model_version="2", sr_sop_uid="1.2.826.0.1.3680043.8.498.2", order=order)


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.5.1"])
def test_hapi_accepts_pacsflows_order_update_and_alert(tmp_path, version):
    result = _critical_result()
    at = dt.datetime(2026, 11, 30, 12, 30, tzinfo=dt.UTC)
    with HapiReceiver(tmp_path / "ris.jsonl") as rx:
        destination = Hl7Destination(name="ris", host="127.0.0.1", port=rx.port, version=version)
        sender = MllpSender(destination)
        try:
            for kind in ("order-update", "alert"):
                key, body = alerts.hl7_message(kind, result, destination, at=at)
                assert sender.send(Message(key, body, kind)) == 0, rx.log_tail()
        finally:
            sender.close()
        update, alert = rx.wait_records(2)

    # Exactly one delivery each, both accepted by HAPI's parser, default validation and structure check.
    assert [r["ack"] for r in (update, alert)] == ["AA", "AA"], (update["error"], alert["error"])
    assert update["type"].startswith("OMI^O23" if version == "2.5.1" else "ORM^O01")
    assert update["version"] == version
    assert (update["orc1"], update["priority"]) == ("XO", "S")
    assert update["obr4Text"] == "[AI: Critical Finding Suspected] CT head without contrast"
    assert update["patientFamily"] == "Núñez-Šimić"
    assert alert["type"].startswith("ORU^R01")
    assert len(alert["obx"]) == 5
    assert {row["obx11"] for row in alert["obx"]} == {"P"}
    assert alert["obx"][1]["obx5"] == "0.9700"


def test_hapi_refusal_of_a_pacsflow_message_is_permanent(tmp_path):
    from pacsflow_router.workflow.senders import SendError

    result = _critical_result()
    with HapiReceiver(tmp_path / "ris.jsonl", fail_first=1) as rx:
        destination = Hl7Destination(name="ris", host="127.0.0.1", port=rx.port, version="2.5.1")
        sender = MllpSender(destination)
        try:
            key, body = alerts.hl7_message("alert", result, destination, at=dt.datetime.now(dt.UTC))
            with pytest.raises(SendError) as refused:
                sender.send(Message(key, body, "alert"))
            assert refused.value.permanent
            assert sender.send(Message(key, body, "alert")) == 0
        finally:
            sender.close()
        assert [r["ack"] for r in rx.wait_records(2)] == ["AE", "AA"]
