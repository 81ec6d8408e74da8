"""The tamper-evident audit chain on SQLite and a real PostgreSQL: records of every writer land in one chain, concurrent
writers (threads and processes) never fork it, and ``pacsflow audit verify`` names a changed, deleted or reordered
record (and a changed or deleted row a record covers) and exits non-zero. Tampering is done with plain SQL on the
database, as someone with file or database access would."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from types import SimpleNamespace

import pytest
from sqlalchemy import text

from pacsflow_router.results import chain
from pacsflow_router.results.approvals import Approvals
from pacsflow_router.results.audit import AuditLog
from pacsflow_router.results.store import ResultsStore
from tests.peers.postgres import fresh_database, postgres_server  # noqa: F401  (fixture)

KEY = "ab" * 32


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return fresh_database(request.getfixturevalue("postgres_server"))


def _fill(url: str) -> ResultsStore:
    """Five records of four writers: an AI result, a reveal, feedback, a login, a bad key."""
    audit = AuditLog(url)
    audit.record_result(study_key=KEY, use_case="ich-head-ct", mode="assistive", model_name="ich_detector",
                        model_version=3, probability=0.91, critical=True, outcome="reported-critical", timings={})
    audit.close()
    store = ResultsStore(url)
    store.record_reveal(result_key=KEY, reader="dr-a")
    store.record_feedback(result_key=KEY, reader="dr-a", verdict="accept")
    chain.record(store.engine, "login", actor="pk_abc", detail={"method": "api-key"})
    chain.record(store.engine, "bad-key", actor="198.51.100.7", outcome="failure", detail={"key_id": "pk_zzz"})
    return store


def _verify(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsflow_router.cli", "audit", "verify", "--url", url],
                          capture_output=True, text=True, timeout=120)


def _sql(store: ResultsStore, statement: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(statement))


def test_an_untouched_chain_verifies_and_links_every_record(url):
    store = _fill(url)
    rows = chain.records(store.engine)
    assert [r["kind"] for r in rows] == ["ai-result", "result-shown", "feedback", "login", "bad-key"]
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["prev_hash"] == chain.GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(rows, rows[1:], strict=False))
    assert chain.verify(store.engine) == (5, [])
    done = _verify(url)
    assert done.returncode == 0, done.stderr
    assert "intact: 5 records" in done.stdout


def test_a_changed_record_is_named(url):
    store = _fill(url)
    _sql(store, "UPDATE audit_chain SET actor = 'pk_other' WHERE id = 4")
    done = _verify(url)
    assert done.returncode == 1
    assert "record 4 (login): content changed" in done.stderr
    assert "record 5" not in done.stderr  # one change, one finding: no cascade


def test_a_changed_record_with_its_hash_recomputed_is_named_by_the_next_link(url):
    store = _fill(url)
    rows = chain.records(store.engine)
    forged = {**rows[1], "actor": "dr-b"}
    forged_hash = chain.record_hash(forged["prev_hash"], forged)
    _sql(store, f"UPDATE audit_chain SET actor = 'dr-b', hash = '{forged_hash}' WHERE id = 2")
    _, findings = chain.verify(store.engine)
    assert [str(f) for f in findings] == [
        "record 3 (feedback): does not follow record 2 (result-shown): that record was changed, replaced or moved, "
        "or this one was"]


def test_a_deleted_record_is_named(url):
    store = _fill(url)
    _sql(store, "DELETE FROM audit_chain WHERE id = 3")
    done = _verify(url)
    assert done.returncode == 1
    assert "record 4 (login): record(s) 3 before it are missing (deleted)" in done.stderr


def test_deleted_last_records_are_found_from_the_head(url):
    store = _fill(url)
    _sql(store, "DELETE FROM audit_chain WHERE id >= 4")
    _, findings = chain.verify(store.engine)
    assert [str(f) for f in findings] == [
        "record 3 (feedback): records 4 to 5 after it are missing (deleted at the end)"]


def test_reordered_records_are_named(url):
    store = _fill(url)
    # Swap records 2 and 3 (every column but the id), as moving rows around would.
    rows = {r["id"]: r for r in chain.records(store.engine)}
    with store.engine.begin() as conn:
        for target, source in ((2, rows[3]), (3, rows[2])):
            conn.execute(text("UPDATE audit_chain SET kind=:kind, at=:at, actor=:actor, subject=:subject, "
                              "outcome=:outcome, detail=:detail, prev_hash=:prev_hash, hash=:hash WHERE id=:id"),
                         {**{k: v for k, v in source.items() if k != "id"}, "id": target})
    _, findings = chain.verify(store.engine)
    named = {(f.record_id, f.kind) for f in findings}
    assert (2, "feedback") in named and (3, "result-shown") in named


@pytest.mark.parametrize(("statement", "problem"), [
    ("UPDATE audit_results SET probability = 0.05, critical = false",
     "record 1 (ai-result): the audit_results row 1 it covers was changed"),
    ("DELETE FROM feedback", "record 3 (feedback): the feedback row 1 it covers is missing (deleted)"),
])
def test_a_changed_or_deleted_covered_row_is_named(url, statement, problem):
    store = _fill(url)
    _sql(store, statement)
    _, findings = chain.verify(store.engine)
    assert [str(f) for f in findings] == [problem]


def test_an_approval_is_chained_in_its_transaction(url):
    store = _fill(url)
    approvals = Approvals(store.engine)
    assert approvals.hold(result_key=KEY, revision=0, study_key=KEY, use_case="ich-head-ct", held={})
    approvals.decide(KEY, approve=True, by="dr-a", role="reader")
    approvals.decide(KEY, approve=True, by="dr-a", role="reader")  # unchanged: no second record
    kinds = [r["kind"] for r in chain.records(store.engine)]
    assert kinds.count("approval") == 1
    assert chain.verify(store.engine)[1] == []


WRITER = textwrap.dedent("""
    import sys
    from pacsflow_router.results import chain
    from pacsflow_router.results.store import open_engine
    engine = open_engine(sys.argv[1])
    for i in range(int(sys.argv[2])):
        chain.record(engine, "login", actor=f"proc-{sys.argv[3]}-{i}")
""")


def test_concurrent_threads_and_processes_never_fork_the_chain(url):
    store = _fill(url)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url, "25", str(n)]) for n in range(3)]

    def thread_writer(n: int) -> None:
        for i in range(25):
            store.record_reveal(result_key=KEY, reader=f"thread-{n}-{i}")

    threads = [threading.Thread(target=thread_writer, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.wait(timeout=120) == 0 for p in procs)
    count, findings = chain.verify(store.engine)
    assert findings == []
    assert count == 5 + 3 * 25 + 3 * 25
    assert [r["id"] for r in chain.records(store.engine)] == list(range(1, count + 1))


def test_the_api_chains_a_page_login_and_bad_keys(tmp_path):
    from fastapi.testclient import TestClient

    from pacsflow_api.app import create_app

    store = ResultsStore(f"sqlite:///{tmp_path / 'store.db'}")
    key_id, token = store.create_api_key("reader")
    with TestClient(create_app(store)) as client:
        assert client.get("/api/v1/worklist", headers={"X-API-Key": f"{key_id}.wrong"}).status_code == 401
        assert client.get("/api/v1/worklist", headers={"X-API-Key": "pk_0000000000000000.x"}).status_code == 401
        assert client.post("/login", data={"api_key": token}, follow_redirects=False).status_code == 303
    rows = chain.records(store.engine)
    assert [(r["kind"], r["actor"], r["outcome"]) for r in rows] == [
        ("bad-key", key_id, "failure"), ("bad-key", "", "failure"), ("login", key_id, "success")]
    assert token.split(".")[1] not in str(rows)  # never the secret
    assert chain.verify(store.engine)[1] == []


def test_router_records_a_received_study_a_refusal_and_a_promotion(tmp_path):
    import yaml

    from pacsflow_router.config import parse_config
    from tests.unit.pacsflow_router.test_config import ISSUE_EXAMPLE

    audit = AuditLog(f"sqlite:///{tmp_path / 'store.db'}")
    audit.record_study_received(KEY, instances=12, completion="stable")
    # The receiver's Refusal (ingest.tlsaccept) as the router's on_refused hands it over.
    audit.record_refusal(SimpleNamespace(listener="dicom", reason="calling-ae-title", peer="192.0.2.9",
                                         detail="CT9 is not allowed", calling_ae_title="CT9", certificate=None))
    silent = parse_config(yaml.safe_load(ISSUE_EXAMPLE.replace("mode: assistive", "mode: silent")))
    assistive = parse_config(yaml.safe_load(ISSUE_EXAMPLE))
    assert audit.record_mode_changes(silent, assistive) == 1
    assert audit.record_mode_changes(assistive, assistive) == 0
    rows = chain.records(audit.engine)
    assert [(r["kind"], r["actor"], r["subject"], r["outcome"]) for r in rows] == [
        ("study-received", "dicom", KEY, "success"), ("association-refused", "192.0.2.9", "dicom", "failure"),
        ("promotion", "routing-config", "ich-head-ct", "success")]
    assert '"from":"silent"' in rows[2]["detail"] and '"to":"assistive"' in rows[2]["detail"]
    assert chain.verify(audit.engine)[1] == []


def test_the_pipeline_chains_the_received_study_and_its_result(tmp_path):
    """Through the real pipeline (spool -> tracker -> acceptance -> audit): a study that is not analysed (8 slices)
    still leaves its study-received and ai-result records, linked, with the result row covered."""
    import time

    from tests.peers.dicomfiles import part10
    from tests.peers.inprocess import in_process_router
    from tests.unit.pacsflow_router.synthetic_ct import datasets
    from tests.unit.pacsflow_router.test_pipeline_not_analysed import _NoInference

    use_case = {"name": "ich-triage", "model": {"name": "ich_detector", "version": 1}, "mode": "triage",
                "match": {"modalities": ["CT"]}, "outputs": {"structuredReport": {"destination": "pacs"}}}
    with in_process_router(tmp_path, [use_case], _NoInference()) as router:  # type: ignore[arg-type]
        for ds in datasets(31, slices=8, rows=256):
            router.spool.store(part10(ds))
        [due] = router.tracker.due(time.time() + 1, 0)
        assert router.pipeline.process(due)
        rows = chain.records(router.audit.engine)
        assert [(r["kind"], r["subject"]) for r in rows] == [("study-received", due.key), ("ai-result", due.key)]
        assert '"instances":8' in rows[0]["detail"] and '"table":"audit_results"' in rows[1]["detail"]
        assert chain.verify(router.audit.engine) == (2, [])
