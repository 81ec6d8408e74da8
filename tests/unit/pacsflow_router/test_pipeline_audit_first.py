"""No SR leaves without its audit record: the pipeline writes the record beside the SR's durable write and commits
it before the SR's outbox row (issue 11 section 2 closed the window where a delivered SR had no record yet).

Through the real pipeline (committed ich_detector on embedded ONNX Runtime), a real SQLite audit store and outbox.
"""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from pacsflow_router.analysis.inference import EmbeddedOnnxBackend
from pacsflow_router.domain import study_key
from tests.peers.dicomfiles import part10
from tests.peers.inprocess import MODEL_REPOSITORY, in_process_router
from tests.unit.pacsflow_router.synthetic_ct import datasets

USE_CASE = {"name": "ich", "model": {"name": "ich_detector", "version": 1}, "mode": "assistive",
            "match": {"modalities": ["CT"]}, "outputs": {"structuredReport": {"destination": "pacs"}}}


@pytest.fixture
def router(tmp_path):
    with in_process_router(tmp_path, [USE_CASE], EmbeddedOnnxBackend(MODEL_REPOSITORY)) as r:
        yield r


def _receive(r, seed: int) -> str:
    study = datasets(seed, slices=16, rows=256)
    for ds in study:
        r.spool.store(part10(ds))
    return str(study[0].StudyInstanceUID)


def _outbox_rows(r) -> list[tuple[str, float]]:
    with sqlite3.connect(r.outbox.directory / "outbox.db") as db:
        return db.execute("SELECT state, enqueued_at FROM outbox WHERE channel = 'dicom'").fetchall()


def test_the_audit_record_is_committed_before_the_sr_is_queued(router):
    uid = _receive(router, 51)
    assert router.process_due() == 1
    (record,) = router.audit.records(study_key=study_key(uid))
    ((state, enqueued_at),) = _outbox_rows(router)
    assert record["outcome"] == "reported" and record["destination_status"] == "queued" and state == "pending"
    assert record["recorded_at"].timestamp() <= enqueued_at


def test_an_audit_store_that_refuses_the_record_keeps_the_sr_from_leaving(router):
    uid = _receive(router, 52)
    with router.audit.engine.begin() as conn:  # a real failure of the store: the results table is gone
        conn.execute(text("DROP TABLE audit_results"))
    (ref,) = router.tracker.due(1e12, 0)
    with pytest.raises(OperationalError):
        router.pipeline.process(ref)
    assert _outbox_rows(router) == []  # nothing queued: the SR cannot leave without its record
    assert not router.tracker.is_finished(uid)  # due again: the service retries the study
