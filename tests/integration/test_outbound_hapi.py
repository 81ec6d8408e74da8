"""pacsflow's HL7 order updates and alerts, sent through the outbox's MLLP sender to HAPI HL7v2 2.6.0 (Java).

HAPI parses and validates each message with its own structures (v2.3, v2.3.1, v2.5.1) and answers AE for a wrong
structure: what it records is what pacsflow sent, decoded by an independent implementation (``make hl7-peer``).
Deliveries are counted at the receiver.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

import pytest

from pacsflow_router.config import Hl7Destination
from pacsflow_router.results.export import MessageSender, Outbox
from pacsflow_router.workflow import alerts
from pacsflow_router.workflow.senders import MllpSender
from tests.peers.hapi import HapiReceiver
from tests.unit.pacsflow_router.test_alerts import ORDER, RESULT

AT = dt.datetime(2026, 11, 30, 13, 5, tzinfo=dt.UTC)


def _outbox(path, port: int, version: str, **kwargs: float) -> Outbox:
    def senders(channel: str, name: str) -> MessageSender:
        return MllpSender(Hl7Destination(name=name, host="127.0.0.1", port=port, version=version,  # type: ignore
                                         timeout_seconds=10))
    opts = {"base_delay": 0.1, "max_delay": 0.5, "poll_interval": 0.1, **kwargs}
    return Outbox(path, lambda name: None, message_senders=senders, **opts)  # type: ignore[arg-type]


def _queue(outbox: Outbox, version: str, result: alerts.CriticalResult) -> dict[str, str]:
    dest = Hl7Destination(name="ris", host="127.0.0.1", port=1, version=version)  # type: ignore[arg-type]
    ids = {}
    for kind in ("order-update", "alert"):
        msh10, body = alerts.hl7_message(kind, result, dest, at=AT)  # type: ignore[arg-type]
        assert outbox.enqueue_message("hl7", "ris", msh10, body, kind=kind, study_key="k")
        ids[kind] = msh10
    return ids


@pytest.mark.parametrize("version,update_type", [("2.3", "ORM^O01"), ("2.3.1", "ORM^O01^ORM_O01"),
                                                 ("2.5.1", "OMI^O23^OMI_O23")])
def test_hapi_accepts_the_order_update_and_the_alert(tmp_path, version, update_type):
    result = dataclasses.replace(RESULT, order=dataclasses.replace(
        ORDER, patient_name="Müller^Zoë", procedure_description="CT head | w/o & more"))
    with HapiReceiver(tmp_path / "rx.jsonl") as rx:
        outbox = _outbox(tmp_path / "outbox", rx.port, version)
        ids = _queue(outbox, version, result)
        assert outbox.deliver_due() == 2, rx.log_tail()
        records = {r["controlId"]: r for r in rx.wait_records(2)}
        outbox.close()
    update, alert = records[ids["order-update"]], records[ids["alert"]]
    assert (update["ack"], update["error"]) == ("AA", None), update
    assert (update["type"], update["version"], update["orc1"], update["priority"]) == (update_type, version, "XO", "S")
    assert update["obr4Text"] == "[AI: Critical Finding Suspected] CT head | w/o & more"
    assert update["obr18"] == ORDER.accession
    assert (update["patientFamily"], update["patientGiven"]) == ("Müller", "Zoë")
    assert update["charset"] == "UNICODE UTF-8"
    assert (alert["ack"], alert["error"]) == ("AA", None), alert
    assert alert["type"].startswith("ORU^R01")
    assert [o["obx11"] for o in alert["obx"]] == ["P"] * 5
    assert alert["obx"][0]["obx5"].startswith("1386000^Intracranial hemorrhage^SCT")


def test_hapi_down_then_up_gets_each_message_once(tmp_path):
    rx = HapiReceiver(tmp_path / "rx.jsonl")  # configured, not started: connection refused
    outbox = _outbox(tmp_path / "outbox", rx.port, "2.5.1")
    ids = _queue(outbox, "2.5.1", RESULT)
    assert outbox.deliver_due() == 0 and outbox.pending() == 2
    rx.start()
    try:
        outbox.start()
        deadline = time.monotonic() + 30
        while outbox.pending() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # more rounds: nothing is sent again
        outbox.close()
        records = rx.records()
    finally:
        rx.stop()
    assert sorted(r["controlId"] for r in records) == sorted(ids.values())
    assert {r["ack"] for r in records} == {"AA"}


def test_an_ae_from_hapi_is_recorded_backed_off_and_the_message_sent_again_later(tmp_path):
    with HapiReceiver(tmp_path / "rx.jsonl", fail_first=1) as rx:
        outbox = _outbox(tmp_path / "outbox", rx.port, "2.5.1", base_delay=10, max_delay=60)
        dest = Hl7Destination(name="ris", host="127.0.0.1", port=1)
        msh10, body = alerts.hl7_message("alert", RESULT, dest, at=AT)
        outbox.enqueue_message("hl7", "ris", msh10, body, kind="alert", study_key="k")
        start = time.time()
        assert outbox.deliver_due(now=start) == 0
        assert outbox.deliver_due(now=start + 1) == 0, "refused: backed off, not resent at once"
        assert outbox.deliver_due(now=start + 60) == 1
        records = rx.wait_records(2)
        outbox.close()
    assert [(r["controlId"], r["ack"]) for r in records] == [(msh10, "AE"), (msh10, "AA")]
