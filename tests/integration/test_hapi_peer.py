"""The independent HL7 v2 peer itself: HAPI's sender against HAPI's receiver, before either judges pacsflow.

If these fail, a failure of pacsflow against HAPI says nothing about pacsflow. Real HAPI HL7v2 2.6.0 on both ends
(``make hl7-peer``); nothing is faked.
"""

from __future__ import annotations

import socket

import pytest

from tests.peers.hapi import HapiReceiver, send
from tests.peers.hl7msgs import OrderMessage, segments

LATIN1_PATIENT = {"charset": "8859/1", "family": "Müller-Lüdenscheid", "given": "Zoë"}


@pytest.fixture
def receiver(tmp_path):
    with HapiReceiver(tmp_path / "received.jsonl") as rx:
        yield rx


@pytest.mark.parametrize("kind,version,msg_type", [("orm23", "2.3", "ORM^O01"), ("orm231", "2.3.1", "ORM^O01"),
                                                   ("omi251", "2.5.1", "OMI^O23^OMI_O23")])
def test_orders_are_accepted_and_their_fields_read(receiver, kind, version, msg_type):
    msg = OrderMessage(control_id=f"C-{kind}", accession=f"A-{kind}")

    (ack,) = send(receiver.port, [msg.encoded(kind)])

    assert (ack["ack"], ack["controlId"], ack["error"]) == ("AA", f"C-{kind}", None)
    (rec,) = receiver.wait_records(1)
    assert rec["controlId"] == f"C-{kind}"
    assert (rec["type"], rec["version"], rec["ack"]) == (msg_type, version, "AA")
    assert (rec["orc1"], rec["priority"], rec["obr18"]) == ("NW", "S", f"A-{kind}")
    assert rec["obr4"] == "CTHEADWO^CT head without contrast^L"
    # UTF-8 (MSH-18 UNICODE UTF-8) and the escapes \T\ \F\ decoded by HAPI, not by us.
    assert (rec["patientFamily"], rec["patientGiven"]) == ("Núñez-Šimić", "José")
    assert rec["obr31Text"] == "Fall & headache | GCS 13"


def test_latin1_order_is_decoded_by_msh18(receiver):
    msg = OrderMessage(control_id="C-L1", **LATIN1_PATIENT)
    data = msg.encoded("orm23")
    assert "ü".encode("latin-1") in data and "ü".encode() not in data

    (ack,) = send(receiver.port, [data])

    assert ack["ack"] == "AA"
    (rec,) = receiver.wait_records(1)
    assert (rec["charset"], rec["patientFamily"], rec["patientGiven"]) == ("8859/1", "Müller-Lüdenscheid", "Zoë")


def test_wrong_structure_gets_ae_naming_the_segment(receiver):
    # An order without its ORC: HAPI can place OBR nowhere in ORM^O01 v2.3.
    er7 = OrderMessage(control_id="C-BAD").orm_o01("2.3")
    no_orc = "\r".join(s for s in segments(er7) if not s.startswith("ORC")) + "\r"

    (ack,) = send(receiver.port, [no_orc])

    assert (ack["ack"], ack["controlId"]) == ("AE", "C-BAD")
    assert "OBR" in ack["error"]
    (rec,) = receiver.wait_records(1)
    assert (rec["ack"], rec["controlId"]) == ("AE", "C-BAD")


def test_required_segment_missing_gets_ae(receiver):
    # OMI^O23 v2.5.1 requires IPC in each order.
    er7 = OrderMessage(control_id="C-NOIPC").omi_o23()
    no_ipc = "\r".join(s for s in segments(er7) if not s.startswith("IPC")) + "\r"

    (ack,) = send(receiver.port, [no_ipc])

    assert ack["ack"] == "AE"
    assert "IPC" in ack["error"]


def test_unknown_message_type_gets_ar(receiver):
    er7 = "MSH|^~\\&|RIS|HOSP|PACSFLOW|PACSFLOW|20261130120000||XYZ^Z99|C-UNK|P|2.3\rPID|1||P1\r"

    (ack,) = send(receiver.port, [er7])

    assert ack["ack"] == "AR"


def test_fail_first_answers_ae_then_aa(tmp_path):
    msgs = [OrderMessage(control_id=f"C-{i}").encoded("orm23") for i in range(3)]
    with HapiReceiver(tmp_path / "received.jsonl", fail_first=2) as rx:
        acks = send(rx.port, msgs)
        assert [a["ack"] for a in acks] == ["AE", "AE", "AA"]
        assert [r["ack"] for r in rx.wait_records(3)] == ["AE", "AE", "AA"]


def test_unparseable_message_is_answered_and_recorded(receiver):
    # Raw MLLP from a plain socket: HAPI's sender would refuse to build this message at all.
    frame = b"\x0bMSH|^~\\&|RIS|HOSP|PACSFLOW|PACSFLOW|20261130120000||ORM^O01|C-RAW|P|9.9\rPID|1\r\x1c\r"
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=30) as s:
        s.sendall(frame)
        reply = b""
        while not reply.endswith(b"\x1c\r"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    assert b"MSA|A" in reply and b"MSA|AA" not in reply
    (rec,) = receiver.wait_records(1)
    assert rec["controlId"] == "C-RAW"
    assert rec["ack"] in ("AE", "AR")


def test_receiver_restarts_on_its_port_and_keeps_its_records(tmp_path):
    rx = HapiReceiver(tmp_path / "received.jsonl").start()
    try:
        assert send(rx.port, [OrderMessage(control_id="C-1").encoded("orm23")])[0]["ack"] == "AA"
        rx.stop()
        (down,) = send(rx.port, [OrderMessage(control_id="C-2").encoded("orm23")])
        assert down["ack"] is None
        rx.start()
        assert send(rx.port, [OrderMessage(control_id="C-3").encoded("orm23")])[0]["ack"] == "AA"
        assert [r["controlId"] for r in rx.records()] == ["C-1", "C-3"]
    finally:
        rx.stop()
