"""The routing config's approval and draft-report switches, and what send_critical does with draft-report."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from pacsflow_router.config import ConfigError, parse_config
from pacsflow_router.results.export import Outbox
from pacsflow_router.workflow.alerts import Coded
from pacsflow_router.workflow.critical import CriticalFinding, send_critical
from pacsflow_router.workflow.drafts import sends_drafts

BASE = {"hl7Destinations": [{"name": "ris", "host": "127.0.0.1", "port": 2575}]}


def _use_case(mode: str, messages: list[str], **triage: object) -> dict:
    return {"name": f"ich-{mode}", "model": {"name": "ich_detector", "version": 1}, "mode": mode,
            "triage": triage, "outputs": {"hl7": {"destination": "ris", "messages": messages}}}


def test_require_approval_is_off_unless_set_and_draft_report_is_a_message_kind():
    config = parse_config({**BASE, "useCases": [
        _use_case("triage", ["alert"]), _use_case("assistive", ["draft-report"], requireApproval=True),
        _use_case("silent", ["draft-report"])]})
    triage, assistive, silent = config.use_cases
    assert not triage.triage.require_approval and assistive.triage.require_approval
    assert [sends_drafts(u) for u in config.use_cases] == [False, True, False], "never from a silent use case"
    with pytest.raises(ConfigError, match="messages"):
        parse_config({**BASE, "useCases": [_use_case("triage", ["final-report"])]})


def test_send_critical_leaves_the_draft_to_the_accept(tmp_path):
    config = parse_config({**BASE, "useCases": [_use_case("triage", ["alert", "draft-report"])]})
    outbox = Outbox(tmp_path / "outbox", lambda name: None)  # type: ignore[arg-type,return-value]
    header = Dataset()
    header.StudyInstanceUID, header.AccessionNumber, header.PatientID = "1.2.3", "ACC1", "P1"
    try:
        done = send_critical(outbox, config, config.use_cases[0], study_key="k", header=header,
                             result=CriticalFinding(0.9, Coded("1386000", "SCT", "ICH"), Coded("CT", "L", "CT"),
                                                    "1", None))
        assert done == ["hl7:ris:alert"]
        assert outbox.counts("hl7") == {"pending": 1}
    finally:
        outbox.close()
