"""Modality Worklist against real dcmtk peers, both directions (issue 8).

* dcmtk ``wlmscpfs`` is the RIS: :class:`MwlPoller` reads its ``.wl`` files into the order store; new and changed
  items update the same order records; a RIS that is down is counted and polled again.
* dcmtk ``findscu -W`` queries pacsflow's worklist SCP, served by a real :class:`DicomReceiver`: it sees the
  priority raised to STAT and the description prefix after ``mark_ai_critical`` (before: as ordered); matching on
  the supported keys; a clear failure status for a query it cannot answer.
* Non-ASCII (UTF-8) patient names come through both ways.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityWorklistInformationFind

from pacsflow_router import metrics
from pacsflow_router.config import MwlSource, parse_config
from pacsflow_router.domain import Order
from pacsflow_router.ingest.scp import DicomReceiver
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.workflow.mwl import MwlPoller
from pacsflow_router.workflow.orders import OrderStore
from pacsflow_router.workflow.worklist import AI_PREFIX, worklist_service
from tests.peers.net import eventually
from tests.peers.worklist import RisItem, RisWorklist, findscu_worklist, ris_item_file, ris_worklist

# dcmtk (wlmscpfs, findscu) is required, not optional: make system-deps installs it and a missing tool fails.

TODAY = datetime.date(2026, 11, 30)
NAME_DE = "Müller^Jürgen"
NAME_JA = "山田^太郎"
SPS = "ScheduledProcedureStepSequence[0]"


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[OrderStore]:
    spool = Spool(tmp_path / "spool", 0.999)
    yield OrderStore(spool, f"sqlite:///{tmp_path / 'store.db'}")
    spool.close()


@pytest.fixture
def ris(tmp_path: Path) -> Iterator[RisWorklist]:
    with ris_worklist(tmp_path / "ris") as worklist:
        yield worklist


def poller(ris_port: int, store: OrderStore, **source: object) -> MwlPoller:
    config = MwlSource(ae_title="RISMWL", host="127.0.0.1", port=ris_port,
                       **{"station_ae_title": "CT01", "modality": "CT", "days_before": 1, "days_after": 1, **source})
    return MwlPoller(config, store, "PACSFLOW", today=lambda: TODAY, connect_timeout=3, acse_timeout=5,
                     dimse_timeout=10)


@pytest.fixture
def receiver(tmp_path: Path, store: OrderStore) -> Iterator[DicomReceiver]:
    """pacsflow's worklist SCP on a real DicomReceiver (free port), reading ``store``."""
    config = parse_config({"aeTitle": "PACSFLOW", "allowedCallingAETitles": ["FINDSCU"],
                           "spoolDir": str(tmp_path / "spool")})
    spool = Spool(tmp_path / "rx-spool", 0.999)
    rx = DicomReceiver(config, spool, port=0, acse_timeout=5, network_timeout=10,
                       services=[worklist_service(store)])
    rx.start()
    yield rx
    rx.stop()
    spool.close()


# -- the RIS's worklist polled (wlmscpfs -> MwlPoller -> OrderStore) ---------------------------------------------

def test_poller_stores_new_items_and_updates_changed_ones(ris: RisWorklist, store: OrderStore):
    ris.write("head", RisItem("ACC-1001", "PID-1", patient_name=NAME_DE, study_uid="1.2.826.0.1.3680043.8.498.11",
                              reason="Sturz, Bewusstlosigkeit", location="Notaufnahme"))
    ris.write("mr", RisItem("ACC-1002", "PID-2", modality="MR", station_ae="MR01"))  # another modality's work
    ris.write("later", RisItem("ACC-1003", "PID-3", start_date="20261205"))  # outside the date window
    ris.write("japan", RisItem("ACC-1004", "PID-4", patient_name=NAME_JA, start_time="1415", priority="STAT"))
    mwl = poller(ris.port, store)
    successes = sample("pacsflow_mwl_polls_total", outcome="success")

    first = mwl.poll_once()

    assert first.outcome == "success", ris.log_tail()
    assert first.items == {"created": 2}
    assert store.get("ACC-1002", "PID-2") is None and store.get("ACC-1003", "PID-3") is None
    order = store.get("ACC-1001", "PID-1")
    assert order == Order(
        accession="ACC-1001", patient_id="PID-1", placer_order_number="PLC1", filler_order_number="FIL1",
        study_uid="1.2.826.0.1.3680043.8.498.11", requested_procedure_id="RP1", modality="CT",
        procedure_code="CTHEAD", procedure_scheme="99RIS", procedure_description="CT head without contrast",
        priority="R", location="Notaufnahme", reason="Sturz, Bewusstlosigkeit", patient_name=NAME_DE,
        patient_birth_date="19700101", patient_sex="F", scheduled_start="20261130093000",
        scheduled_station_ae_title="CT01", status="scheduled", source="mwl")
    japan = store.get("ACC-1004", "PID-4")
    assert japan is not None and japan.patient_name == NAME_JA
    assert japan.priority == "S" and japan.scheduled_start == "20261130141500"

    # The RIS changes an item (priority and description): the same order record is updated.
    ris.write("head", RisItem("ACC-1001", "PID-1", patient_name=NAME_DE, study_uid="1.2.826.0.1.3680043.8.498.11",
                              reason="Sturz, Bewusstlosigkeit", location="Notaufnahme", priority="HIGH",
                              description="CT head and cervical spine"))
    second = mwl.poll_once()
    assert second.items == {"updated": 1, "unchanged": 1}
    changed = store.get("ACC-1001", "PID-1")
    assert changed is not None
    assert (changed.priority, changed.procedure_description) == ("A", "CT head and cervical spine")
    assert store.count() == 2

    assert mwl.poll_once().items == {"unchanged": 2}
    assert sample("pacsflow_mwl_polls_total", outcome="success") == successes + 3


def test_an_item_with_a_nul_in_a_value_is_skipped_and_the_rest_of_the_poll_is_stored(
        tmp_path: Path, store: OrderStore, caplog: pytest.LogCaptureFixture):
    # dcmtk's wlmscpfs cuts a value at a NUL (C strings), so this RIS is a pynetdicom C-FIND SCP answering the
    # identifiers as given: a broken RIS export with a NUL inside the reason for study, then a good item.
    good = pydicom.dcmread(ris_item_file(tmp_path, RisItem("ACC-2001", "PID-21")))
    bad = pydicom.dcmread(ris_item_file(tmp_path, RisItem("ACC-2002", "PID-22")))
    bad.ReasonForTheRequestedProcedure = "Fall\x00PRIVATE-NOTE"

    def answer(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xFF00, bad
        yield 0xFF00, good
        yield 0x0000, None

    ae = AE(ae_title="RISMWL")
    ae.add_supported_context(ModalityWorklistInformationFind)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, answer)])
    try:
        with caplog.at_level(logging.WARNING, logger="pacsflow_router.workflow.mwl"):
            result = poller(server.server_address[1], store).poll_once()
    finally:
        server.shutdown()

    assert result.outcome == "success"
    assert result.items == {"skipped": 1, "created": 1}
    assert store.get("ACC-2001", "PID-21") is not None and store.get("ACC-2002", "PID-22") is None
    assert "ReasonForTheRequestedProcedure holds a NUL character" in caplog.text
    assert "PRIVATE-NOTE" not in caplog.text and "ACC-2002" not in caplog.text


def test_poller_counts_a_ris_that_is_down_and_recovers_when_it_is_back(tmp_path: Path, store: OrderStore):
    ris = RisWorklist(tmp_path / "ris")
    ris.write("head", RisItem("ACC-2001", "PID-1"))
    mwl = poller(ris.port, store, poll_seconds=0.2)
    unreachable = sample("pacsflow_mwl_polls_total", outcome="unreachable")

    assert mwl.poll_once().outcome == "unreachable"  # nothing listens yet: logged and counted, no exception
    mwl.start()
    try:
        eventually(lambda: sample("pacsflow_mwl_polls_total", outcome="unreachable") >= unreachable + 3,
                   "the poller thread to keep polling a RIS that is down", timeout=30)
        assert store.count() == 0
        ris.start()
        eventually(lambda: store.get("ACC-2001", "PID-1"), "the order from the RIS once it is up", timeout=30,
                   context=ris.log_tail)
    finally:
        mwl.stop()
        ris.stop()


def test_poller_counts_a_ris_failure_status_as_failed(tmp_path: Path, store: OrderStore):
    ris = RisWorklist(tmp_path / "ris")
    (ris.directory / "lockfile").unlink()  # wlmscpfs then answers every query 0xA700 (out of resources)
    ris.start()
    try:
        failed = sample("pacsflow_mwl_polls_total", outcome="failed")
        result = poller(ris.port, store).poll_once()
    finally:
        ris.stop()
    assert result.outcome == "failed"
    assert sample("pacsflow_mwl_polls_total", outcome="failed") == failed + 1


# -- pacsflow's own worklist (findscu -W -> DicomReceiver -> worklist SCP -> OrderStore) ---------------------------

ORDER = Order(accession="ACC-3001", patient_id="PID-31", study_uid="1.2.826.0.1.3680043.8.498.31",
              requested_procedure_id="RP31", modality="CT", procedure_code="CTHEAD", procedure_scheme="99RIS",
              procedure_description="CT head without contrast", priority="R", location="ED", patient_name=NAME_DE,
              patient_birth_date="19700101", patient_sex="M", scheduled_start="20261130083000",
              scheduled_station_ae_title="CT01")
OTHER = Order(accession="ACC-3002", patient_id="PID-32", modality="CT", procedure_description="CT chest",
              priority="A", patient_name="Smith^Anna", scheduled_start="20261130080000",
              scheduled_station_ae_title="CT01")
MR = Order(accession="ACC-3003", patient_id="PID-33", modality="MR", procedure_description="MR knee",
           priority="R", patient_name="Jones^Bob", scheduled_start="20261130070000", scheduled_station_ae_title="MR01")

RETURN_KEYS = [
    "SpecificCharacterSet", "AccessionNumber", "PatientName", "PatientID", "RequestedProcedurePriority",
    "RequestedProcedureDescription", "StudyInstanceUID",
    f"{SPS}.ScheduledProcedureStepDescription", f"{SPS}.ScheduledProcedureStepStartDate",
    f"{SPS}.ScheduledProcedureStepStartTime",
]


def ct_today(port: int, *extra: str):
    return findscu_worklist(port, [f"{SPS}.Modality=CT", f"{SPS}.ScheduledStationAETitle=CT01",
                                   f"{SPS}.ScheduledProcedureStepStartDate=20261130", *RETURN_KEYS, *extra])


def test_findscu_sees_the_ai_priority_raised(receiver: DicomReceiver, store: OrderStore):
    for order in (ORDER, OTHER, MR):
        store.upsert(order)
    queries = sample("pacsflow_worklist_queries_total", outcome="success")

    before = ct_today(receiver.port)

    assert before.returncode == 0 and before.success, before.output
    assert [item.AccessionNumber for item in before.items] == ["ACC-3002", "ACC-3001"]  # HIGH before ROUTINE
    head = before.items[1]
    assert head.RequestedProcedurePriority == "ROUTINE"
    assert head.RequestedProcedureDescription == "CT head without contrast"
    assert head.ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription == "CT head without contrast"
    assert head.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime == "083000"
    assert head.SpecificCharacterSet == "ISO_IR 192" and head.PatientName == NAME_DE
    assert before.items[0].RequestedProcedurePriority == "HIGH"
    assert "SpecificCharacterSet" not in before.items[0] or not before.items[0].SpecificCharacterSet

    assert store.mark_ai_critical(ORDER, "ich-head-ct", 1_800_000_000.0)
    after = ct_today(receiver.port)

    assert [item.AccessionNumber for item in after.items] == ["ACC-3001", "ACC-3002"]  # critical first
    head = after.items[0]
    assert head.RequestedProcedurePriority == "STAT"
    assert head.RequestedProcedureDescription == AI_PREFIX + "CT head without contrast"
    assert head.ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription == \
        AI_PREFIX + "CT head without contrast"
    assert head.PatientName == NAME_DE and head.StudyInstanceUID == ORDER.study_uid
    assert after.items[1].RequestedProcedurePriority == "HIGH"
    assert sample("pacsflow_worklist_queries_total", outcome="success") == queries + 2


def test_findscu_matching_on_the_supported_keys(receiver: DicomReceiver, store: OrderStore):
    for order in (ORDER, OTHER, MR):
        store.upsert(order)
    store.upsert(Order(accession="ACC-3004", patient_id="PID-34", modality="CT", patient_name=NAME_JA,
                       procedure_description="CT Kopf", scheduled_start="20261201100000",
                       scheduled_station_ae_title="CT02"))

    def accessions(*keys: str) -> list[str]:
        given = {key.split("=")[0] for key in keys}
        answer = findscu_worklist(receiver.port, [*keys, *({"AccessionNumber", "PatientName"} - given)])
        assert answer.success, answer.output
        return sorted(item.AccessionNumber for item in answer.items)

    assert accessions() == ["ACC-3001", "ACC-3002", "ACC-3003", "ACC-3004"]
    assert accessions(f"{SPS}.Modality=MR") == ["ACC-3003"]
    assert accessions(f"{SPS}.ScheduledStationAETitle=CT0?") == ["ACC-3001", "ACC-3002", "ACC-3004"]
    assert accessions(f"{SPS}.ScheduledProcedureStepStartDate=20261201-") == ["ACC-3004"]
    assert accessions(f"{SPS}.ScheduledProcedureStepStartDate=-20261130") == ["ACC-3001", "ACC-3002", "ACC-3003"]
    assert accessions(f"{SPS}.ScheduledProcedureStepStartTime=0745-0900") == ["ACC-3001", "ACC-3002"]
    assert accessions("AccessionNumber=ACC-3003") == ["ACC-3003"]
    assert accessions("PatientID=PID-3*") == ["ACC-3001", "ACC-3002", "ACC-3003", "ACC-3004"]
    assert accessions("PatientID=PID-32") == ["ACC-3002"]
    # A UTF-8 query value (PN matching may ignore case, PS3.4 C.2.2.2.1).
    assert accessions("SpecificCharacterSet=ISO_IR 192", "PatientName=müller*") == ["ACC-3001"]
    assert accessions("SpecificCharacterSet=ISO_IR 192", "PatientName=山田*") == ["ACC-3004"]

    answer = findscu_worklist(receiver.port, ["SpecificCharacterSet=ISO_IR 192", "PatientName=山田*",
                                              "AccessionNumber"])
    (item,) = answer.items
    assert item.PatientName == NAME_JA and item.SpecificCharacterSet == "ISO_IR 192"


def test_findscu_gets_a_warning_for_unsupported_matching_and_a_failure_for_a_query_it_cannot_answer(
        receiver: DicomReceiver, store: OrderStore):
    store.upsert(ORDER)

    # Matching on a key this SCP does not match on: ignored, each match says so with 0xFF01.
    warned = findscu_worklist(receiver.port, ["ReferringPhysicianName=House*", "AccessionNumber"])
    assert warned.success and [i.AccessionNumber for i in warned.items] == ["ACC-3001"]
    assert warned.statuses == [0xFF01, 0x0000], warned.output

    refused = sample("pacsflow_worklist_queries_total", outcome="refused")
    two_steps = findscu_worklist(receiver.port, [f"{SPS}.Modality=CT", "ScheduledProcedureStepSequence[1].Modality=MR",
                                                 "AccessionNumber"])
    assert two_steps.items == []
    assert two_steps.status == 0xA900, two_steps.output
    assert "Scheduled Procedure Step Sequence must have one item" in two_steps.output

    bad_date = findscu_worklist(receiver.port, [f"{SPS}.ScheduledProcedureStepStartDate=30.11.2026",
                                                "AccessionNumber"])
    assert bad_date.items == [] and bad_date.status == 0xA900, bad_date.output
    assert sample("pacsflow_worklist_queries_total", outcome="refused") == refused + 2

    # The SCP is still there for the next client.
    assert [i.AccessionNumber for i in ct_today(receiver.port).items] == ["ACC-3001"]


# -- both ways: RIS -> poller -> store -> pacsflow's worklist -> findscu -------------------------------------------

def test_a_ris_order_with_a_utf8_name_reaches_pacsflows_worklist_unchanged(
        ris: RisWorklist, store: OrderStore, receiver: DicomReceiver, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    ris.write("ja", RisItem("ACC-4001", "PID-41", patient_name=NAME_JA, description="頭部CT 単純",
                            study_uid="1.2.826.0.1.3680043.8.498.41"))
    assert poller(ris.port, store).poll_once().items == {"created": 1}

    answer = ct_today(receiver.port)
    (item,) = answer.items
    assert item.PatientName == NAME_JA
    assert item.RequestedProcedureDescription == "頭部CT 単純"
    assert item.RequestedProcedurePriority == "ROUTINE"
    assert item.SpecificCharacterSet == "ISO_IR 192"

    order = store.get("ACC-4001", "PID-41")
    assert order is not None and store.mark_ai_critical(order, "ich-head-ct", 1_800_000_000.0)
    (item,) = ct_today(receiver.port).items
    assert item.RequestedProcedurePriority == "STAT"
    assert item.RequestedProcedureDescription == AI_PREFIX + "頭部CT 単純"
    # Neither edge logs patient data, at any level (pynetdicom's identifier dumps included).
    assert caplog.records
    for secret in ("山田", "ACC-4001", "PID-41"):
        assert secret not in caplog.text

