"""Order store (in the results store, on SQLite and on PostgreSQL): durable across kill -9, one ACK per control ID
(also under concurrent writers), HL7 order controls, worklist order, expiry."""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import pytest

from pacsflow_router import metrics
from pacsflow_router.domain import Order
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.models import phantom
from pacsflow_router.workflow.orders import (
    REASON_UNABLE_TO_CANCEL,
    REASON_UNKNOWN_ORDER,
    OrderStore,
)
from tests.peers.dicomfiles import part10
from tests.peers.postgres import fresh_database, postgres_server  # noqa: F401  (fixture)


def _ack(code: str, reason: str | None) -> bytes:
    return f"MSH|^~\\&|ACK|{code}|{reason or ''}".encode()


def _order(accession: str = "ACC1", patient_id: str = "PID1", **fields: str) -> Order:
    return Order(accession=accession, patient_id=patient_id, **fields)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """The results store's URL: a SQLite file, or a fresh database on the throwaway PostgreSQL cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return fresh_database(request.getfixturevalue("postgres_server"))


@pytest.fixture
def spool(tmp_path):
    spool = Spool(tmp_path / "spool", 0.999)
    yield spool
    spool.close()


@pytest.fixture
def store(spool, url):
    store = OrderStore(spool, url)
    yield store
    store.close()


def test_new_order_is_created_and_acked_aa(store):
    out = store.apply_hl7("MSG1", "NW", _order(modality="CT", priority="R"), _ack)
    assert out.outcome == "created"
    assert out.ack == _ack("AA", None)
    assert store.get("ACC1", "PID1") == _order(modality="CT", priority="R", status="scheduled")
    assert store.count() == 1 and store.count("scheduled") == 1


def test_duplicate_control_id_gets_the_same_ack_and_changes_nothing(store):
    first = store.apply_hl7("MSG1", "NW", _order(priority="R"), _ack)
    calls: list[str] = []

    def other_ack(code: str, reason: str | None) -> bytes:
        calls.append(code)
        return b"a different ack"

    # Same control ID, different content (a sender re-sending after a lost ACK must not apply anything twice).
    again = store.apply_hl7("MSG1", "XO", _order(priority="S"), other_ack)
    assert again.outcome == "duplicate"
    assert again.ack == first.ack
    assert calls == []
    assert store.get("ACC1", "PID1").priority == "R"
    # A duplicate NW for another key creates nothing either.
    dup_new = store.apply_hl7("MSG1", "NW", _order("ACC2"), _ack)
    assert dup_new.outcome == "duplicate" and store.count() == 1


def test_duplicate_of_a_rejected_message_is_rejected_again(store):
    first = store.apply_hl7("MSG9", "XO", _order(), _ack)
    assert first.outcome == "rejected" and first.ack == _ack("AE", REASON_UNKNOWN_ORDER)
    store.apply_hl7("MSG10", "NW", _order(), _ack)
    again = store.apply_hl7("MSG9", "XO", _order(priority="S"), _ack)
    assert again.outcome == "duplicate" and again.ack == first.ack
    assert store.get("ACC1", "PID1").priority == ""


def test_xo_updates_non_empty_fields_and_keeps_the_rest(store):
    store.apply_hl7("1", "NW", _order(modality="CT", patient_class="E", priority="R"), _ack)
    out = store.apply_hl7("2", "XO", _order(priority="S"), _ack)
    assert out.outcome == "updated"
    stored = store.get("ACC1", "PID1")
    assert (stored.priority, stored.modality, stored.patient_class) == ("S", "CT", "E")


@pytest.mark.parametrize("control", ["XO", "CA", "SC", "DC"])
def test_change_for_an_unknown_order_is_ae_and_stores_nothing(store, control):
    store.apply_hl7("1", "NW", _order("OTHER"), _ack)
    out = store.apply_hl7("2", control, _order(), _ack)
    assert out.outcome == "rejected"
    assert out.ack == _ack("AE", REASON_UNKNOWN_ORDER)
    assert store.get("ACC1", "PID1") is None
    assert store.count() == 1 and store.get("OTHER", "PID1").status == "scheduled"


def test_cancelled_order_is_not_matched_to_a_study(store):
    store.apply_hl7("1", "NW", _order(study_uid="1.2.3"), _ack)
    out = store.apply_hl7("2", "CA", _order(), _ack)
    assert out.outcome == "cancelled" and out.ack == _ack("AA", None)
    assert store.get("ACC1", "PID1").status == "cancelled"
    assert store.find_for_study("1.2.3", "ACC1", "PID1") is None
    assert store.count("scheduled") == 0


def test_cancel_after_the_images_arrived_is_refused(spool, store):
    datasets, _ = phantom.generate_study(3, lesion=False, slices=1, rows=16, cols=16)
    study_uid = datasets[0].StudyInstanceUID
    store.apply_hl7("1", "NW", _order(study_uid=study_uid), _ack)
    spool.store(part10(datasets[0]))
    out = store.apply_hl7("2", "CA", _order(), _ack)
    assert out.outcome == "rejected"
    assert out.ack == _ack("AE", REASON_UNABLE_TO_CANCEL)
    assert store.get("ACC1", "PID1").status == "scheduled"
    # Without a study UID the order's own status tells: in progress (MPPS) cannot be cancelled either.
    store.apply_hl7("3", "NW", _order("ACC2"), _ack)
    store.set_status("ACC2", "PID1", "in-progress")
    assert store.apply_hl7("4", "CA", _order("ACC2"), _ack).outcome == "rejected"


def test_cancel_after_the_match_is_refused_even_without_spooled_images(store):
    """The match is recorded on the order: a study matched by accession + patient ID (its instances no longer in
    the spool, or never indexed there) still makes a later CA, or an SC to cancelled, an AE."""
    store.apply_hl7("1", "NW", _order(), _ack)
    matched = store.match_study("1.2.840.99", "ACC1", "PID1")
    assert matched is not None and matched.study_uid == "1.2.840.99" and matched.status == "scheduled"
    assert store.apply_hl7("2", "CA", _order(), _ack).ack == _ack("AE", REASON_UNABLE_TO_CANCEL)
    assert store.apply_hl7("3", "SC", _order(status="cancelled"), _ack).outcome == "rejected"
    assert store.get("ACC1", "PID1").status == "scheduled"
    # Matching again is a no-op; a discontinue (the procedure stopped part way) is still taken.
    assert store.match_study("1.2.840.99", "", "") == matched
    assert store.apply_hl7("4", "DC", _order(), _ack).outcome == "discontinued"
    assert store.expire(time.time() + 86400, 60) == 0


def test_a_cancelled_order_is_not_matched(store):
    store.apply_hl7("1", "NW", _order(study_uid="1.2.840.98"), _ack)
    store.apply_hl7("2", "NW", _order("ACC2"), _ack)
    store.apply_hl7("3", "CA", _order(), _ack)
    store.apply_hl7("4", "CA", _order("ACC2"), _ack)
    assert store.match_study("1.2.840.98", "ACC1", "PID1") is None
    assert store.match_study("1.2.840.97", "ACC2", "PID1") is None
    assert store.get("ACC2", "PID1").study_uid == ""  # nothing was linked to the cancelled order


def _race(cancel: Callable[[], object], match: Callable[[], object]) -> dict[str, object]:
    """Run ``cancel`` and ``match`` in two threads released together; their results by name."""
    start, got = threading.Barrier(2), {}

    def run(name: str, call: Callable[[], object]) -> None:
        start.wait()
        got[name] = call()

    threads = [threading.Thread(target=run, args=("cancel", cancel)), threading.Thread(target=run, args=("match", match))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return got


@pytest.mark.parametrize("with_study_uid", [False, True], ids=["by-accession", "by-study-uid"])
def test_a_cancel_racing_the_match_has_one_outcome(spool, url, with_study_uid):
    """A cancel (HL7 listener thread) and the study's match (pipeline thread), each on its own store and connections,
    released at once, 25 times: either the match wins (the study gets the order, the CA is AE, the order stays
    open) or the cancel wins (AA, the study gets no order, nothing is linked to the cancelled order); never a
    cancelled order handed to the pipeline, nor a cancel accepted after the match."""
    listener, pipeline = OrderStore(spool, url), OrderStore(spool, url)
    try:
        for n in range(25):
            study_uid = f"1.2.840.777.{n}"
            order = _order(f"RACE{n}", study_uid=study_uid if with_study_uid else "")
            listener.apply_hl7(f"NW-{n}", "NW", order, _ack)
            got = _race(lambda: listener.apply_hl7(f"CA-{n}", "CA", order, _ack).outcome,  # noqa: B023
                        lambda: pipeline.match_study(study_uid, order.accession, order.patient_id))  # noqa: B023
            stored = listener.get(order.accession, order.patient_id)
            assert stored is not None and set(got) == {"cancel", "match"}, got
            if got["match"] is not None:
                assert (got["cancel"], stored.status, stored.study_uid) == ("rejected", "scheduled", study_uid), n
                assert got["match"] == stored
            else:
                assert (got["cancel"], stored.status) == ("cancelled", "cancelled"), n
                assert stored.study_uid == (study_uid if with_study_uid else "")
    finally:
        listener.close()
        pipeline.close()


def test_discontinue_and_status_change(store):
    store.apply_hl7("1", "NW", _order(), _ack)
    assert store.apply_hl7("2", "SC", _order(status="in-progress"), _ack).outcome == "updated"
    assert store.get("ACC1", "PID1").status == "in-progress"
    assert store.apply_hl7("3", "DC", _order(), _ack).outcome == "discontinued"
    assert store.get("ACC1", "PID1").status == "discontinued"


def test_new_order_with_an_existing_key_updates_it(store):
    store.apply_hl7("1", "NW", _order(priority="R"), _ack)
    store.apply_hl7("2", "CA", _order(), _ack)
    out = store.apply_hl7("3", "NW", _order(priority="A"), _ack)
    assert out.outcome == "updated"
    stored = store.get("ACC1", "PID1")
    assert (stored.status, stored.priority) == ("scheduled", "A")
    assert store.count() == 1


def test_order_and_ack_survive_kill_9(tmp_path, url):
    """A child process stores an order and is killed right after apply_hl7 returns: the order and its ACK are there."""
    script = textwrap.dedent(f"""
        import os, signal
        from pacsflow_router.domain import Order
        from pacsflow_router.ingest.spool import Spool
        from pacsflow_router.workflow.orders import OrderStore
        store = OrderStore(Spool({str(tmp_path / "spool")!r}, 0.999), {url!r})
        out = store.apply_hl7("CTRL-1", "NW", Order(accession="ACC1", patient_id="PID1", priority="S"),
                              lambda code, reason: b"ACK-" + code.encode())
        print(out.outcome, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.strip() == "created"
    store = OrderStore(Spool(tmp_path / "spool", 0.999), url)
    assert store.get("ACC1", "PID1") == _order(priority="S")
    again = store.apply_hl7("CTRL-1", "NW", _order(priority="S"), _ack)
    assert (again.outcome, again.ack) == ("duplicate", b"ACK-AA")
    store.close()


def test_concurrent_writers_store_one_order_and_one_ack_per_control_id(spool, url):
    """Eight threads, each with its own store (its own connections, as several routers would have), send the same
    messages at once: each control ID is applied once and answered the same ACK, each order key is stored once."""
    stores = [OrderStore(spool, url) for _ in range(8)]
    start = threading.Barrier(len(stores))
    outcomes: list[list[tuple[str, bytes]]] = [[] for _ in stores]

    def send(i: int) -> None:
        start.wait()
        for n in range(10):
            # Every thread: the same control IDs (a sender re-sending) and the same keys under other control IDs.
            out = stores[i].apply_hl7(f"SAME-{n}", "NW", _order(f"ACC{n}", priority="R"),
                                      lambda code, reason, n=n: f"ACK {code} {n}".encode())
            outcomes[i].append((out.outcome, out.ack))
            stores[i].apply_hl7(f"OWN-{i}-{n}", "NW", _order(f"ACC{n}", priority="S"), _ack)
            stores[i].mark_ai_critical(_order(f"ACC{n}"), f"uc-{i}", float(i))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert all(len(o) == 10 for o in outcomes), "a writer failed"
        for n in range(10):
            per_message = [o[n] for o in outcomes]
            # The first to commit created the order or (another thread's own message was first) updated it.
            applied = [outcome for outcome, _ in per_message if outcome != "duplicate"]
            assert len(applied) == 1 and applied[0] in ("created", "updated"), per_message
            assert {ack for _, ack in per_message} == {f"ACK AA {n}".encode()}
        assert stores[0].count() == 10 and stores[0].count("scheduled") == 10
        entry = stores[0].worklist()[0]
        assert entry.ai_critical and sorted(entry.ai_use_cases) == [f"uc-{i}" for i in range(8)]
    finally:
        for s in stores:
            s.close()


def test_upsert_from_the_worklist(store):
    item = _order(modality="CT", scheduled_station_ae_title="CT1", scheduled_start="20261130120000", source="mwl")
    assert store.upsert(item) == "created"
    assert store.upsert(item) == "unchanged"
    store.set_status("ACC1", "PID1", "in-progress")
    # The poller still sees the item as scheduled: that does not undo MPPS's in-progress.
    assert store.upsert(item) == "unchanged"
    assert store.upsert(dataclasses.replace(item, priority="S")) == "updated"
    stored = store.get("ACC1", "PID1")
    assert (stored.status, stored.priority, stored.source) == ("in-progress", "S", "mwl")


def test_find_for_study_by_uid_then_accession_and_patient(store):
    store.apply_hl7("1", "NW", _order("A1", study_uid="1.2.840.1"), _ack)
    store.apply_hl7("2", "NW", _order("A2"), _ack)
    assert store.find_for_study("1.2.840.1", "", "").accession == "A1"
    assert store.find_for_study("9.9", "A2", "PID1").accession == "A2"
    assert store.find_for_study("9.9", "A2", "OTHER-PATIENT") is None
    assert store.find_for_study("", "", "") is None


def test_worklist_order_ai_first_then_priority_then_time(store):
    store.upsert(_order("R1", priority="R", scheduled_start="20261130080000"))
    store.upsert(_order("R2", priority="R", scheduled_start="20261130070000"))
    store.upsert(_order("S1", priority="S", scheduled_start="20261130090000"))
    store.upsert(_order("A1", priority="A", scheduled_start="20261130090000"))
    store.upsert(_order("CANCELLED", priority="S", scheduled_start="20261130090000", status="cancelled"))
    assert [e.order.accession for e in store.worklist()] == ["S1", "A1", "R2", "R1"]
    assert store.mark_ai_critical(_order("R1"), "ich-head-ct", 100.0)
    assert not store.mark_ai_critical(_order("R1"), "ich-head-ct", 200.0)
    assert store.mark_ai_critical(_order("R1"), "ptx-chest", 300.0)
    assert not store.mark_ai_critical(_order("UNKNOWN"), "ich-head-ct", 100.0)
    entries = store.worklist()
    assert [e.order.accession for e in entries] == ["R1", "S1", "A1", "R2"]
    assert entries[0].ai_critical and entries[0].ai_use_cases == ("ich-head-ct", "ptx-chest")
    assert entries[0].ai_raised_at == 100.0
    # A completed study stays listed while it carries an AI result; a plain completed one drops off.
    store.set_status("R1", "PID1", "completed")
    store.set_status("R2", "PID1", "completed")
    assert [e.order.accession for e in store.worklist()] == ["R1", "S1", "A1"]


def test_worklist_filters(store):
    store.upsert(_order("CT-TODAY", modality="CT", scheduled_station_ae_title="CT1", scheduled_start="20261130"))
    store.upsert(_order("CT-OTHER-STATION", modality="CT", scheduled_station_ae_title="CT2",
                        scheduled_start="20261130"))
    store.upsert(_order("CT-ANY-STATION", modality="CT", scheduled_start="20261130"))
    store.upsert(_order("CT-TOMORROW", modality="CT", scheduled_station_ae_title="CT1", scheduled_start="20261201"))
    store.upsert(_order("DX-TODAY", modality="DX", scheduled_start="20261130"))
    listed = store.worklist(modality="CT", station_ae_title="CT1", date_from="20261130", date_to="20261130")
    assert sorted(e.order.accession for e in listed) == ["CT-ANY-STATION", "CT-TODAY"]
    assert len(store.worklist(date_from="20261201")) == 1


def test_expire_counts_and_spares_orders_with_a_study(spool, store):
    datasets, _ = phantom.generate_study(4, lesion=False, slices=1, rows=16, cols=16)
    store.upsert(_order("OLD"))
    store.upsert(_order("OLD-WITH-STUDY", study_uid=datasets[0].StudyInstanceUID))
    spool.store(part10(datasets[0]))
    store.upsert(_order("OLD-IN-PROGRESS", status="in-progress"))
    store.upsert(_order("OLD-FLAGGED"))  # its study came, matched by accession: the AI flagged it
    store.mark_ai_critical(_order("OLD-FLAGGED"), "ich-head-ct", time.time())
    store.upsert(_order("OLD-MATCHED"))  # its study came, matched by accession (no instance left in the spool)
    store.match_study("1.2.840.55", "OLD-MATCHED", "PID1")
    before = metrics.ORDERS_EXPIRED._value.get()
    later = time.time() + 3600
    assert store.expire(later, 7200) == 0
    assert store.expire(later, 1800) == 1
    assert store.get("OLD", "PID1").status == "expired"
    assert store.get("OLD-WITH-STUDY", "PID1").status == "scheduled"
    assert metrics.ORDERS_EXPIRED._value.get() - before == 1
    assert store.get("OLD-FLAGGED", "PID1").status == "scheduled"
    assert store.get("OLD-MATCHED", "PID1").status == "scheduled"
    assert metrics.ORDERS_OPEN._value.get() == 4
    assert store.expire(later, 1800) == 0


def test_set_status_refuses_unknown_status(store):
    store.upsert(_order())
    with pytest.raises(ValueError):
        store.set_status("ACC1", "PID1", "done")
    assert not store.set_status("NOPE", "PID1", "completed")


def test_no_patient_data_in_logs(store, caplog):
    caplog.set_level("DEBUG", logger="pacsflow_router.workflow.orders")
    order = _order("ACC-SECRET", "PID-SECRET", patient_name="DOE^JANE")
    store.apply_hl7("1", "NW", order, _ack)
    store.apply_hl7("2", "CA", order, _ack)
    store.mark_ai_critical(order, "uc", 1.0)
    assert caplog.records
    assert "SECRET" not in caplog.text and "DOE" not in caplog.text


def test_orders_an_older_pacsflow_kept_in_the_spool_move_into_the_store(spool, url):
    """Before the results store held them, orders and control IDs were tables of the spool's ``state.db``: the first
    start moves them (a re-sent message still gets its stored ACK) and drops them from the spool."""
    body = json.dumps(dataclasses.asdict(_order(priority="S", status="in-progress")), sort_keys=True)
    with spool.transaction() as db:
        db.execute("CREATE TABLE orders (accession TEXT NOT NULL, patient_id TEXT NOT NULL, body TEXT NOT NULL, "
                   "study_uid TEXT NOT NULL, status TEXT NOT NULL, modality TEXT NOT NULL, "
                   "station_ae_title TEXT NOT NULL, scheduled_date TEXT NOT NULL, priority_rank INTEGER NOT NULL, "
                   "scheduled_start TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, "
                   "ai_critical INTEGER NOT NULL DEFAULT 0, ai_use_cases TEXT NOT NULL DEFAULT '[]', "
                   "ai_raised_at REAL, PRIMARY KEY (accession, patient_id))")
        db.execute("CREATE TABLE hl7_messages (control_id TEXT PRIMARY KEY, ack BLOB NOT NULL, outcome TEXT NOT NULL, "
                   "accession TEXT, patient_id TEXT, received_at REAL NOT NULL)")
        db.execute("INSERT INTO orders VALUES ('ACC1', 'PID1', ?, '', 'in-progress', '', '', '20261130', 0, '', "
                   "1.0, 2.0, 1, '[\"ich-head-ct\"]', 1.5)", (body,))
        db.execute("INSERT INTO hl7_messages VALUES ('OLD-1', ?, 'created', 'ACC1', 'PID1', 1.0)", (b"OLD-ACK",))
    store = OrderStore(spool, url)
    try:
        assert store.get("ACC1", "PID1") == _order(priority="S", status="in-progress")
        [entry] = store.worklist()
        assert (entry.ai_critical, entry.ai_use_cases, entry.ai_raised_at) == (True, ("ich-head-ct",), 1.5)
        again = store.apply_hl7("OLD-1", "NW", _order(), _ack)
        assert (again.outcome, again.ack) == ("duplicate", b"OLD-ACK")
        assert spool.execute("SELECT name FROM sqlite_master WHERE name IN ('orders', 'hl7_messages')") == []
    finally:
        store.close()
    # A second start (the move already done) finds the same rows.
    store = OrderStore(spool, url)
    assert store.count() == 1
    store.close()
