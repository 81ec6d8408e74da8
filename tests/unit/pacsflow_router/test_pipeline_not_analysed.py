"""A study that fails the acceptance criteria or the domain check, through the real pipeline (spool -> tracker ->
acceptance -> audit): "not analysed: <reason>" in the audit, the metric per reason, no SR, no inference.

The inference backend here refuses every call: a not-analysed study must never reach the model (a stand-in, not a
fake of a peer: nothing is inferred in these tests).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from pacsflow_router import metrics
from pacsflow_router.domain import study_key
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.ingest.studies import StudyTracker
from pacsflow_router.pipeline import Pipeline
from tests.peers.dicomfiles import part10
from tests.peers.inprocess import in_process_router
from tests.unit.pacsflow_router.synthetic_ct import chest_hu, datasets


class _NoInference:
    """Fails the test if the pipeline asks for inference."""

    def infer(self, model: object, batch: np.ndarray, *, priority: int = 0) -> object:
        raise AssertionError("a study that is not analysed must never reach the model")

    def close(self) -> None:
        pass


@pytest.fixture
def router(tmp_path):
    use_case = {"name": "ich-triage", "model": {"name": "ich_detector", "version": 1}, "mode": "triage",
                "match": {"modalities": ["CT"]}, "outputs": {"structuredReport": {"destination": "pacs"}}}
    with in_process_router(tmp_path, [use_case], _NoInference()) as r:  # type: ignore[arg-type]
        yield r.spool, r.tracker, r.pipeline, r.outbox, r.audit


def _count(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "pacsflow_studies_not_analysed_total", {"use_case": "ich-triage", "reason": reason}) or 0.0


def _send_and_process(spool: Spool, tracker: StudyTracker, pipeline: Pipeline, dss: list) -> None:
    for ds in dss:
        spool.store(part10(ds))
    due = tracker.due(time.time() + 1, 0)
    assert len(due) == 1
    assert pipeline.process(due[0])


@pytest.mark.parametrize(("dss", "reason", "outcome"), [
    (lambda: datasets(21, slices=8, rows=256), "slice-count", "not analysed: 8 slices, the model needs at least 16"),
    (lambda: datasets(22, slices=16, rows=256, BodyPartExamined="CHEST"), "body-part",
     "not analysed: body part CHEST, the model needs BRAIN/HEAD/SKULL"),
    (lambda: datasets(23, chest_hu, slices=16, rows=256), "out-of-domain",
     "not analysed: out of domain (enclosed region): "),
], ids=["slice-count", "body-part", "out-of-domain"])
def test_a_failing_study_is_audited_counted_and_sends_nothing(router, dss, reason, outcome):
    spool, tracker, pipeline, outbox, audit = router
    studies = dss()
    before = _count(reason)
    _send_and_process(spool, tracker, pipeline, studies)

    (record,) = audit.records(study_key=study_key(str(studies[0].StudyInstanceUID)))
    assert record["outcome"].startswith(outcome), record["outcome"]
    assert record["probability"] is None and record["critical"] is False and record["destination"] is None
    assert record["selection"].startswith(("no series passes (1 candidate: 1 failed ", "chose series 1 of 1; the "
                                                                                       "chosen series is out of"))
    assert "acceptance" in record["timings"]
    assert _count(reason) == before + 1
    assert list((outbox.directory / "items").glob("*")) == []
    assert tracker.outcome(str(studies[0].StudyInstanceUID), "ich-triage") == "not-analysed"
    assert tracker.is_finished(str(studies[0].StudyInstanceUID))


def test_a_crash_after_the_audit_record_neither_records_nor_counts_twice(router):
    spool, tracker, pipeline, outbox, audit = router
    studies = datasets(24, slices=8, rows=256)
    before = _count("slice-count")
    _send_and_process(spool, tracker, pipeline, studies)
    spool.execute("UPDATE studies SET finished_at = NULL")
    spool.execute("DELETE FROM results")
    assert pipeline.process(tracker.due(time.time() + 1, 0)[0])
    assert len(audit.records(study_key=study_key(str(studies[0].StudyInstanceUID)))) == 1
    assert _count("slice-count") == before + 1


def test_no_patient_data_in_the_outcome_or_the_log(router, caplog):
    spool, tracker, pipeline, outbox, audit = router
    studies = datasets(25, slices=8, rows=256)
    caplog.set_level("INFO")
    _send_and_process(spool, tracker, pipeline, studies)
    (record,) = audit.records(study_key=study_key(str(studies[0].StudyInstanceUID)))
    first = studies[0]
    text = record["outcome"] + record["selection"] + caplog.text
    for value in (first.PatientName, first.PatientID, first.StudyInstanceUID, first.SeriesInstanceUID,
                  first.AccessionNumber):
        assert str(value) not in text


def test_a_study_the_use_case_does_not_apply_to_is_not_counted_as_not_analysed(router):
    spool, tracker, pipeline, outbox, audit = router
    studies = datasets(26, slices=16, rows=256, Modality="MR")
    before = {reason: _count(reason) for reason in metrics.NOT_ANALYSED_REASONS}
    _send_and_process(spool, tracker, pipeline, studies)
    assert tracker.outcome(str(studies[0].StudyInstanceUID), "ich-triage") == "not-applicable"
    (record,) = audit.records(study_key=study_key(str(studies[0].StudyInstanceUID)))
    assert record["outcome"] == "not applicable: no series matches the use case (modality, series description)"
    assert {reason: _count(reason) for reason in metrics.NOT_ANALYSED_REASONS} == before
    assert list((outbox.directory / "items").glob("*")) == []
