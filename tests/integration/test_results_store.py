"""The results store on SQLite and on a real PostgreSQL (a throwaway cluster): Alembic migrations from empty and from
an audit database written before migrations existed, the audit trail, idempotent feedback under concurrency, API keys
hashed at rest."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, inspect, select, text

from pacsflow_router.results import store
from pacsflow_router.results.audit import AuditLog
from pacsflow_router.results.schema import API_KEYS, EVENTS, FEEDBACK, METADATA, RESULTS
from tests.peers.postgres import fresh_database, postgres_server  # noqa: F401  (fixture)

ALL_TABLES = {"audit_results", "audit_events", "feedback", "reveals", "api_keys", "review_results", "api_access", "ground_truth",
              "approvals", "draft_reports", "orders", "hl7_messages", "alembic_version", "audit_chain",
              "audit_chain_head", "audit_forward"}


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh database on the session's PostgreSQL cluster."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        yield fresh_database(request.getfixturevalue("postgres_server"))


def test_an_empty_database_is_migrated_to_head_and_matches_the_tables_the_code_uses(store_url):
    engine = store.open_engine(store_url)
    try:
        assert store.current(engine) is None
        store.upgrade(engine)
        assert store.current(engine) == store.head() == "0008_order_match"
        assert set(inspect(engine).get_table_names()) == ALL_TABLES
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), METADATA)
        assert diff == [], "the migrations and schema.py disagree"
        store.upgrade(engine)  # at head already: nothing to do, no error
    finally:
        engine.dispose()


def _old_result_row() -> dict:
    return {"recorded_at": dt.datetime(2026, 11, 1, 10, tzinfo=dt.UTC), "study_key": "a" * 16,
            "use_case": "ich-head-ct", "mode": "assistive", "model_name": "ich_detector", "model_version": 1,
            "probability": 0.2, "critical": False, "outcome": "reported", "timings": {"infer": 0.1}}


@pytest.mark.parametrize("stamped", [True, False], ids=["at-revision-1", "before-alembic"])
def test_an_audit_database_of_todays_schema_is_migrated_to_head_keeping_its_rows(store_url, stamped):
    engine = store.open_engine(store_url)
    try:
        if stamped:
            store.upgrade(engine, "0001_audit")
            assert set(inspect(engine).get_table_names()) == {"audit_results", "audit_events", "alembic_version"}
        else:  # what AuditLog.create_all left before migrations: the tables, no alembic_version
            RESULTS.create(engine)
            EVENTS.create(engine)
        with engine.begin() as conn:
            conn.execute(insert(RESULTS).values(**_old_result_row(), revision=0))
            conn.execute(insert(EVENTS).values(recorded_at=dt.datetime.now(dt.UTC), study_key="a" * 16,
                                               destination="pacs", outcome="delivered"))
    finally:
        engine.dispose()
    audit = AuditLog(store_url)
    try:
        assert store.current(audit.engine) == store.head()
        [record] = audit.records()
        assert (record["study_key"], record["probability"], record["destination_status"]) == ("a" * 16, 0.2, None)
        assert [e["outcome"] for e in audit.events()] == ["delivered"]
        assert set(inspect(audit.engine).get_table_names()) == ALL_TABLES
    finally:
        audit.close()


def test_the_audit_log_writes_and_reads_on_both_backends(store_url):
    audit = AuditLog(store_url)
    try:
        common = {"study_key": "b" * 16, "use_case": "ich-head-ct", "mode": "assistive", "model_name": "ich",
                  "model_version": 3, "probability": 0.91, "critical": True, "outcome": "reported-critical",
                  "timings": {"infer": 0.05}, "destination": "pacs", "sr_key": "s0"}
        assert audit.record_result(**common) is True
        assert audit.record_result(**common) is False  # a reprocess: no second record
        assert audit.record_result(**{**common, "revision": 1, "sr_key": "s1", "amends_sr_key": "s0"}) is True
        audit.record_delivery(study_key="b" * 16, use_case="ich-head-ct", destination="pacs", outcome="delivered",
                              sr_key="s1")
        first, amended = audit.records(study_key="b" * 16)
        assert (first["revision"], first["critical"], first["destination_status"]) == (0, True, None)
        assert (amended["revision"], amended["destination_status"]) == (1, "delivered")
    finally:
        audit.close()
    AuditLog(store_url).close()  # a restart finds head and migrates nothing


def test_the_same_feedback_twice_is_one_row_and_other_verdicts_are_their_own(store_url):
    results = store.ResultsStore(store_url)
    try:
        assert results.record_feedback(result_key="r1", reader="pk_reader", verdict="reject", comment="bleed? no")
        assert not results.record_feedback(result_key="r1", reader="pk_reader", verdict="reject", comment="again")
        assert results.record_feedback(result_key="r1", reader="pk_reader", verdict="modify",
                                       corrected_finding="subdural", corrected_location={"slice": 12})
        assert results.record_feedback(result_key="r1", reader="pk_other", verdict="reject")
        rows = results.feedback(result_key="r1")
        assert [(r["reader"], r["verdict"], r["comment"]) for r in rows] == [
            ("pk_reader", "reject", "bleed? no"), ("pk_reader", "modify", None), ("pk_other", "reject", None)]
        assert rows[1]["corrected_location"] == {"slice": 12}
        with pytest.raises(ValueError, match="not one of accept, modify, reject"):
            results.record_feedback(result_key="r1", reader="pk_reader", verdict="maybe")
        results.record_reveal(result_key="r1", reader="pk_reader")
        assert [r["reader"] for r in results.reveals(result_key="r1")] == ["pk_reader"]
    finally:
        results.close()


def test_concurrent_identical_feedback_leaves_exactly_one_row_and_no_error(store_url):
    results = store.ResultsStore(store_url)
    threads_n = 8
    barrier = threading.Barrier(threads_n)
    outcomes: list[bool] = []
    errors: list[BaseException] = []

    def post() -> None:
        barrier.wait()
        try:
            outcomes.append(results.record_feedback(result_key="r2", reader="pk_reader", verdict="accept"))
        except BaseException as exc:  # noqa: BLE001  (collected and asserted on below)
            errors.append(exc)

    workers = [threading.Thread(target=post) for _ in range(threads_n)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert errors == []
        assert sorted(outcomes) == [False] * (threads_n - 1) + [True]
        with results.engine.connect() as conn:
            assert conn.execute(select(FEEDBACK.c.id)).all().__len__() == 1
    finally:
        results.close()


def test_api_keys_are_hashed_at_rest_rotatable_and_revocable(store_url):
    results = store.ResultsStore(store_url)
    try:
        key_id, token = results.create_api_key("reader")
        secret = token.split(".", 1)[1]
        with results.engine.connect() as conn:
            [stored] = conn.execute(select(API_KEYS.c.secret_hash).where(API_KEYS.c.id == key_id)).scalars()
            dump = " ".join(str(v) for row in conn.execute(text("SELECT * FROM api_keys")) for v in row)
        assert secret not in dump and stored.startswith("scrypt$")
        assert results.authenticate(token) == (key_id, "reader")
        assert results.authenticate(f"{key_id}.wrong") is None
        new_token = results.rotate_api_key(key_id)
        assert results.authenticate(token) is None and results.authenticate(new_token) == (key_id, "reader")
        results.revoke_api_key(key_id)
        assert results.authenticate(new_token) is None
        with pytest.raises(KeyError):
            results.rotate_api_key(key_id)
        with pytest.raises(ValueError, match="role 'root'"):
            results.create_api_key("root")
    finally:
        results.close()


def test_processes_opening_an_empty_store_at_once_all_start(store_url):
    """A router and the API starting together on an empty database: one migrates, the others wait and find head
    (an advisory lock on PostgreSQL, a file lock next to a SQLite file)."""
    opener = "import sys; from pacsflow_router.results.audit import AuditLog; AuditLog(sys.argv[1]).close()"
    procs = [subprocess.Popen([sys.executable, "-c", opener, store_url], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    failures = []
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        if proc.returncode:
            failures.append(err[-1500:])
    assert failures == []
    engine = store.open_engine(store_url)
    try:
        assert store.current(engine) == store.head()
    finally:
        engine.dispose()


def test_threads_opening_one_store_at_once_all_start(store_url):
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def open_store() -> None:
        barrier.wait()
        try:
            AuditLog(store_url).close()
        except BaseException as exc:  # noqa: BLE001  (collected and asserted on below)
            errors.append(exc)

    workers = [threading.Thread(target=open_store) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert errors == []
