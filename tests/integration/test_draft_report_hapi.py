"""The accepted draft's ORU^R01, sent through the outbox's MLLP sender to HAPI HL7v2 2.6.0 (Java, ``make hl7-peer``):
HAPI parses it with its own structures for each version pacsflow speaks and answers AA, and what it decoded is the
draft text line by line, each OBX preliminary."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from pacsflow_router.config import Hl7Destination
from pacsflow_router.results.export import MessageSender, Outbox
from pacsflow_router.workflow import alerts
from pacsflow_router.workflow.senders import MllpSender
from tests.peers.hapi import HapiReceiver
from tests.unit.pacsflow_router.test_alerts import ORDER

AT = dt.datetime(2026, 11, 30, 13, 5, tzinfo=dt.UTC)
TEXT = ("DRAFT - AI-GENERATED, NOT VERIFIED BY A RADIOLOGIST\nCT head | w/o & more: hyperdensity ~ 12 mm^2\n\n"
        "Model ich_detector v2 \\ p=0.97")


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.5.1"])
def test_hapi_accepts_the_draft_report(tmp_path, version):
    order = dataclasses.replace(ORDER, patient_name="Müller^Zoë")

    def senders(channel: str, name: str) -> MessageSender:
        return MllpSender(Hl7Destination(name=name, host="127.0.0.1", port=rx.port, version=version,  # type: ignore
                                         timeout_seconds=10))

    dest = Hl7Destination(name="ris", host="127.0.0.1", port=1, version=version)  # type: ignore[arg-type]
    msh10, body = alerts.draft_report("1.2.3.4", "ich", 1, TEXT, order, dest, at=AT)
    assert msh10 == alerts.draft_control_id("1.2.3.4", "ich", 1) != alerts.draft_control_id("1.2.3.4", "ich", 2)
    with HapiReceiver(tmp_path / "rx.jsonl") as rx:
        outbox = Outbox(tmp_path / "outbox", lambda name: None, message_senders=senders)  # type: ignore[arg-type]
        assert outbox.enqueue_message("hl7", "ris", msh10, body, kind="draft-report", study_key="k")
        assert not outbox.enqueue_message("hl7", "ris", msh10, body, kind="draft-report", study_key="k")
        assert outbox.deliver_due() == 1, rx.log_tail()
        (record,) = rx.wait_records(1)
        outbox.close()
    assert (record["ack"], record["error"]) == ("AA", None), record
    assert record["type"].startswith("ORU^R01") and record["version"] == version
    assert record["charset"] == "UNICODE UTF-8" and record["patientFamily"] == "Müller"
    assert record["obr18"] == ORDER.accession
    lines = TEXT.splitlines()
    assert [o["obx11"] for o in record["obx"]] == ["P"] * len(lines)
    assert {o["obx3"] for o in record["obx"]} == {"draft-report^AI draft report (unverified)^99PACSFLOW"}
    # HAPI's encoded() re-escapes the value: the escapes pacsflow wrote (an empty line: an empty OBX-5, None here).
    assert [o["obx5"] or "" for o in record["obx"]] == [alerts.escape(line) for line in lines]
