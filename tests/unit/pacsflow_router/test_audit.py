"""audit.AuditLog on a real SQLite file: one record per study and use case, delivery events appended."""

from __future__ import annotations

import sqlite3

from pacsflow_router.domain import study_key
from pacsflow_router.results.audit import AuditLog

KEY = study_key("1.2.826.0.1.3680043.8.498.1")


def _result(log: AuditLog, **overrides) -> bool:
    values = dict(
        study_key=KEY, use_case="ich-head-ct", mode="assistive", model_name="ich_detector", model_version=1,
        probability=0.91, critical=False, outcome="reported", timings={"preprocess": 0.2, "inference": 0.05},
        destination="pacs", destination_status="queued",
    )
    values.update(overrides)
    return log.record_result(**values)


def test_one_record_per_study_use_case_and_model_version_even_after_a_reprocess(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit' / 'audit.db'}"
    log = AuditLog(url)
    assert _result(log) is True
    # A reprocess after a crash repeats the write with (possibly) different timings: it must not add a record.
    assert _result(log, timings={"preprocess": 9.9}) is False
    # A new model version is a new result and gets its own record; so does another use case.
    assert _result(log, model_version=2) is True
    assert _result(log, use_case="other-use-case", mode="silent", outcome="logged-silent",
                   destination=None, destination_status=None) is True
    log.close()

    reopened = AuditLog(url)
    records = reopened.records(study_key=KEY, use_case="ich-head-ct")
    assert [(r["model_version"], r["timings"]) for r in records] == [
        (1, {"preprocess": 0.2, "inference": 0.05}), (2, {"preprocess": 0.2, "inference": 0.05})]
    assert records[0]["probability"] == 0.91 and records[0]["mode"] == "assistive"
    silent = reopened.records(use_case="other-use-case")
    assert len(silent) == 1 and silent[0]["outcome"] == "logged-silent" and silent[0]["destination"] is None


def test_delivery_updates_are_appended_events_and_the_result_row_is_never_updated(tmp_path):
    db = tmp_path / "audit.db"
    log = AuditLog(f"sqlite:///{db}")
    _result(log)
    log.record_delivery(study_key=KEY, use_case="ich-head-ct", destination="pacs", outcome="retrying",
                        detail="destination 'pacs' (ORTHANC@127.0.0.1:4242): cannot connect")
    log.record_delivery(study_key=KEY, use_case="ich-head-ct", destination="pacs", outcome="delivered")

    (record,) = log.records(study_key=KEY)
    assert [e["outcome"] for e in record["deliveries"]] == ["retrying", "delivered"]
    assert record["destination_status"] == "delivered"
    log.close()

    with sqlite3.connect(db) as raw:
        # The stored result row still says what was true when it was written: append-only.
        assert raw.execute("SELECT destination_status FROM audit_results").fetchall() == [("queued",)]
        assert raw.execute("SELECT COUNT(*) FROM audit_events").fetchone() == (2,)
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_error_outcomes_without_probability_are_recorded(tmp_path):
    log = AuditLog(f"sqlite:///{tmp_path / 'audit.db'}")
    assert _result(log, probability=None, outcome="error: model ich_detector v7 not in the repository",
                   destination=None, destination_status=None, timings={})
    (record,) = log.records()
    assert record["probability"] is None and record["outcome"].startswith("error: ")
    assert record["deliveries"] == [] and record["destination_status"] is None
