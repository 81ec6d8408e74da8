"""pacsflow's HL7 order listener against HAPI HL7v2 2.6.0 (Java), the independent sender (``make hl7-peer``).

HAPI's client sends ORM^O01 (v2.3, v2.3.1) and OMI^O23 (v2.5.1) to pacsflow's MLLP listener and parses the ACKs it
gets back; the order store is read to see what was kept. The other direction (pacsflow's order updates and alerts
validated by HAPI's receiver) is tests/integration/test_outbound_hapi.py.
"""

from __future__ import annotations

import pytest

from pacsflow_router.config import Hl7Listener as Hl7ListenerConfig
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.workflow.listener import Hl7Listener
from pacsflow_router.workflow.orders import OrderStore
from tests.peers.hapi import send
from tests.peers.hl7msgs import OrderMessage
from tests.peers.net import free_port

KINDS = ["orm23", "orm231", "omi251"]


@pytest.fixture
def pacsflow(tmp_path):
    """pacsflow's HL7 listener on a free loopback port over a fresh spool; yields (listener, store)."""
    store = OrderStore(Spool(tmp_path / "spool"), f"sqlite:///{tmp_path / 'store.db'}")
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
