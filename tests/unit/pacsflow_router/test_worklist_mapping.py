"""Worklist mapping without a network: RIS item -> Order (workflow.mwl), C-FIND identifier -> matching and
responses (workflow.worklist). The same paths run against dcmtk in tests/integration/test_worklist.py."""

from __future__ import annotations

import datetime

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacsflow_router.config import MwlSource
from pacsflow_router.domain import Order
from pacsflow_router.workflow.mwl import NulInValueError, build_query, order_from_item
from pacsflow_router.workflow.orders import WorklistEntry
from pacsflow_router.workflow.worklist import (
    AI_PREFIX,
    IDENTIFIER_DOES_NOT_MATCH,
    QueryRefused,
    WorklistQuery,
    response_for,
)


def _item(**top: object) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.AccessionNumber = "A1"
    ds.PatientID = "P1"
    ds.PatientName = "Müller^Jürgen"
    ds.RequestedProcedurePriority = "STAT"
    sps = Dataset()
    sps.Modality = "CT"
    sps.ScheduledStationAETitle = "CT01"
    sps.ScheduledProcedureStepStartDate = "20261130"
    sps.ScheduledProcedureStepStartTime = "0930"
    sps.ScheduledProcedureStepDescription = "CT head"
    sps.ScheduledProcedureStepStatus = "STARTED"
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    for keyword, value in top.items():
        setattr(ds, keyword, value)
    return ds


def test_poll_query_asks_for_the_configured_station_modality_and_date_window():
    source = MwlSource(ae_title="RIS", host="ris", port=104, station_ae_title="CT01", modality="CT",
                       days_before=1, days_after=2)
    query = build_query(source, datetime.date(2026, 12, 31))
    sps = query.ScheduledProcedureStepSequence[0]
    assert (sps.ScheduledStationAETitle, sps.Modality) == ("CT01", "CT")
    assert sps.ScheduledProcedureStepStartDate == "20261230-20270102"
    assert "AccessionNumber" in query and "RequestedProcedureCodeSequence" in query


def test_a_ris_item_becomes_an_order_from_the_worklist():
    order = order_from_item(_item())
    assert order is not None
    assert (order.source, order.priority, order.status) == ("mwl", "S", "in-progress")
    assert order.scheduled_start == "20261130093000"
    assert order.patient_name == "Müller^Jürgen"
    # No Requested Procedure Description: the SPS description stands in.
    assert order.procedure_description == "CT head"


@pytest.mark.parametrize("missing", ["AccessionNumber", "PatientID"])
def test_an_item_without_its_key_is_skipped(missing: str):
    assert order_from_item(_item(**{missing: ""})) is None


def test_an_item_with_a_nul_inside_a_value_is_refused_naming_the_field_not_the_value():
    with pytest.raises(NulInValueError, match="^ReasonForTheRequestedProcedure holds a NUL character$"):
        order_from_item(_item(ReasonForTheRequestedProcedure="Fall\x00secret"))
    # Trailing NUL padding is padding, not content.
    order = order_from_item(_item(RequestedProcedureID="RP7\x00"))
    assert order is not None and order.requested_procedure_id == "RP7"


ORDER = Order(accession="A1", patient_id="P1", modality="CT", priority="R", patient_name="Ærø^Åse",
              procedure_description="X" * 60, scheduled_start="20261130083000", scheduled_station_ae_title="CT01")


def _request(*sps_items: Dataset, **top: str) -> Dataset:
    ds = Dataset()
    for keyword, value in top.items():
        setattr(ds, keyword, value)
    ds.ScheduledProcedureStepSequence = Sequence(list(sps_items))
    return ds


def _sps(**keys: str) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_response_has_the_requested_keys_and_the_ai_priority():
    request = _request(_sps(ScheduledProcedureStepDescription="", Modality=""), AccessionNumber="",
                       RequestedProcedurePriority="", RequestedProcedureDescription="", PatientName="",
                       PatientWeight="")
    plain = response_for(WorklistEntry(ORDER, False, (), None), request)
    assert plain.RequestedProcedurePriority == "ROUTINE"
    assert plain.SpecificCharacterSet == "ISO_IR 192"  # the name is not ASCII
    assert "PatientWeight" in plain and plain.PatientWeight is None  # unknown return key: zero length
    assert "PatientID" not in plain  # not asked for
    assert set(plain.ScheduledProcedureStepSequence[0].keys()) == set(request.ScheduledProcedureStepSequence[0].keys())

    raised = response_for(WorklistEntry(ORDER, True, ("ich-head-ct",), 1.0), request)
    assert raised.RequestedProcedurePriority == "STAT"
    assert raised.RequestedProcedureDescription.startswith(AI_PREFIX)
    assert len(raised.RequestedProcedureDescription) == 64  # LO: cut to fit, never invalid
    assert raised.ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription.startswith(AI_PREFIX)


@pytest.mark.parametrize(("time_range", "matches"), [
    ("0800-0900", True), ("08-08", True), ("0831-", False), ("-0829", False), ("083000", True), ("09", False),
])
def test_time_range_matching(time_range: str, matches: bool):
    query = WorklistQuery.parse(_request(_sps(ScheduledProcedureStepStartTime=time_range)))
    assert query.matches(ORDER) is matches


def test_wildcards_and_unsupported_keys():
    query = WorklistQuery.parse(_request(_sps(ScheduledStationAETitle="CT*", ScheduledPerformingPhysicianName="Dr*"),
                                         PatientName="ærø*", ReferringPhysicianName="House"))
    assert query.matches(ORDER)
    assert query.unsupported_keys == ["ReferringPhysicianName",
                                      "ScheduledProcedureStepSequence>ScheduledPerformingPhysicianName"]
    assert not WorklistQuery.parse(_request(_sps(), PatientID="P2*")).matches(ORDER)


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # the malformed values are the point
@pytest.mark.parametrize("steps", [
    [{"Modality": "CT"}, {"Modality": "MR"}],
    [{"ScheduledProcedureStepStartDate": "2026-11-30"}],
    [{"ScheduledProcedureStepStartTime": "8:30"}],
])
def test_queries_that_do_not_fit_the_model_are_refused(steps: list[dict[str, str]]):
    with pytest.raises(QueryRefused) as refused:
        WorklistQuery.parse(_request(*(_sps(**step) for step in steps)))
    assert refused.value.status == IDENTIFIER_DOES_NOT_MATCH and refused.value.comment
