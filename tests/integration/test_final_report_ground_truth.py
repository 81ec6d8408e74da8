"""Final-report ORU^R01 messages through the HL7 listener over real MLLP (python-hl7's ``mllp_send`` as the sender):
coded findings are stored as ground truth in the results store (SQLite and PostgreSQL) and counted by the evidence;
non-final reports are acknowledged and ignored; bad coded values are refused with the field's location."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from pacsflow_router import metrics
from pacsflow_router.config import Hl7Listener as Hl7ListenerConfig
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.results import evidence
from pacsflow_router.results.store import ResultsStore
from pacsflow_router.workflow.listener import Hl7Listener
from pacsflow_router.workflow.orders import OrderStore
from tests.integration.test_evidence_store import FINDING, result_row
from tests.peers.net import free_port
from tests.peers.postgres import fresh_database, postgres_server  # noqa: F401  (fixture)

MLLP_SEND = Path(sys.executable).parent / "mllp_send"


def report(control_id: str, accession: str, *, status: str = "F", answer: str = "Y", version: str = "2.5.1") -> str:
    """An ORU^R01 final report: a coded finding (OBX CWE, OBX-3 the finding, OBX-5 Y/N) and the report text."""
    obr = ["OBR", "1", "PL1", "FL1", "CTHEAD^CT head without contrast^L", "", "", "20261130110000"] + [""] * 11
    obr[18] = accession
    obr += ["", "", "", "20261130120000", "", "", status]
    assert obr[25] == status
    value_type = "CWE" if version == "2.5.1" else "CE"
    return "\r".join([
        f"MSH|^~\\&|RIS|HOSP|PACSFLOW|HOSP|20261130120000||ORU^R01|{control_id}|P|{version}",
        "PID|1||P123^^^HOSP||Doe^John",
        "|".join(obr),
        f"OBX|1|{value_type}|{FINDING}^Intracranial haemorrhage^SCT||{answer}||||||F",
        "OBX|2|TX|18782-3^Radiology study observation^LN||Acute subdural haematoma, left.||||||F",
    ])


def mllp_send(port: int, messages: list[str], tmp_path: Path) -> str:
    path = tmp_path / "reports.hl7"
    path.write_text("\n".join(m.replace("\r", "\n") for m in messages), encoding="utf-8")
    out = subprocess.run([str(MLLP_SEND), "--port", str(port), "--file", str(path), "--loose", "127.0.0.1"],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.decode()


@pytest.fixture(params=["sqlite", "postgresql"])
def listening(request: pytest.FixtureRequest, tmp_path) -> Iterator[tuple[Hl7Listener, ResultsStore]]:
    url = (f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite"
           else fresh_database(request.getfixturevalue("postgres_server")))
    results = ResultsStore(url)
    spool = Spool(tmp_path / "spool")
    listener = Hl7Listener(Hl7ListenerConfig(port=free_port()), OrderStore(spool, results.engine),
                           ground_truth=partial(results.record_ground_truth, source="hl7"))
    listener.start()
    try:
        yield listener, results
    finally:
        listener.stop()
        spool.close()
        results.close()


def test_final_reports_become_ground_truth_that_the_evidence_counts(listening, tmp_path):
    listener, results = listening
    before = metrics.REGISTRY.get_sample_value("pacsflow_hl7_messages_total", {"kind": "ORU^R01", "ack": "AA"}) or 0
    results.record_result(result_row(1, present=True))
    results.record_result(result_row(2, present=True))
    acks = mllp_send(listener.port, [report("R1", "ACC0001"), report("R2", "ACC0002", answer="N", version="2.3"),
                                     report("R3", "ACC0003", status="P")], tmp_path)
    assert all(f"MSA|AA|{c}" in acks for c in ("R1", "R2", "R3")), acks
    assert metrics.REGISTRY.get_sample_value("pacsflow_hl7_messages_total", {"kind": "ORU^R01", "ack": "AA"}) == before + 3
    labels = {(r["accession"], r["use_case"], r["finding_code"], r["present"], r["source"])
              for r in results.ground_truth()}
    # The preliminary report (OBR-25 P) is acknowledged and not stored.
    assert labels == {("ACC0001", "", FINDING, True, "hl7"), ("ACC0002", "", FINDING, False, "hl7")}
    v1 = evidence.use_case_evidence(results, "ich")["versions"][0]
    assert (v1["true_positive"], v1["false_positive"], v1["labelled"]) == (1, 1, 2)

    # A resend changes nothing; a corrected report (C) replaces the label.
    acks = mllp_send(listener.port, [report("R1", "ACC0001"), report("R4", "ACC0002", status="C")], tmp_path)
    assert "MSA|AA|R1" in acks and "MSA|AA|R4" in acks
    assert len(results.ground_truth()) == 2
    assert evidence.use_case_evidence(results, "ich")["versions"][0]["true_positive"] == 2


def test_a_coded_finding_that_is_neither_yes_nor_no_is_refused_and_nothing_stored(listening, tmp_path):
    listener, results = listening
    acks = mllp_send(listener.port, [report("B1", "SECRET-ACC", answer="MAYBE")], tmp_path)
    assert "MSA|AE|B1" in acks and "OBX^1^5" in acks and "SECRET-ACC" not in acks, acks
    acks = mllp_send(listener.port, [report("B2", "")], tmp_path)
    assert "MSA|AE|B2" in acks and "OBR^1^18" in acks, acks
    assert results.ground_truth() == []


def test_without_a_ground_truth_store_a_report_is_an_unsupported_type(tmp_path):
    spool = Spool(tmp_path / "spool")
    listener = Hl7Listener(Hl7ListenerConfig(port=free_port()),
                           OrderStore(spool, f"sqlite:///{tmp_path / 'store.db'}"))
    listener.start()
    try:
        acks = mllp_send(listener.port, [report("U1", "ACC0001")], tmp_path)
    finally:
        listener.stop()
        spool.close()
    assert "MSA|AR|U1" in acks, acks


def test_hapi_sends_a_final_report_and_parses_the_ack(listening):
    """HAPI HL7v2 (Java, the independent peer of tests/peers/hapi.py) sends the ORU^R01 and parses the ACK."""
    from tests.peers.hapi import send

    listener, results = listening
    (ack,) = send(listener.port, [report("H1", "ACC0009", answer="2667000")])
    assert ack["ack"] == "AA" and ack["controlId"] == "H1", ack
    assert [(r["accession"], r["finding_code"], r["present"]) for r in results.ground_truth()] == [
        ("ACC0009", FINDING, False)]
