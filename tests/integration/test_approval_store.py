"""The approvals and accepted drafts in the results store, on SQLite and a real PostgreSQL (a throwaway cluster):
what the router and pacsflow-api hand each other through it (results/approvals.py)."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator

import pytest

from pacsflow_router.results.approvals import Approvals
from pacsflow_router.results.store import ResultsStore
from tests.peers.postgres import fresh_database, postgres_server  # noqa: F401  (fixture)

HELD = {"header": {"StudyInstanceUID": "1.2.3"}, "probability": 0.97, "finding": ["1386000", "SCT", "ICH"]}


@pytest.fixture(params=["sqlite", "postgresql"])
def approvals(request: pytest.FixtureRequest, tmp_path) -> Iterator[Approvals]:
    url = (f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite"
           else fresh_database(request.getfixturevalue("postgres_server")))
    store = ResultsStore(url)
    try:
        yield Approvals(store.engine)
    finally:
        store.close()


def test_a_held_result_is_decided_once_and_completed_once(approvals):
    assert approvals.hold(result_key="r1", revision=0, study_key="s1", use_case="ich", held=HELD)
    assert not approvals.hold(result_key="r1", revision=0, study_key="s1", use_case="ich", held=HELD), "a repeat"
    assert approvals.hold(result_key="r2", revision=0, study_key="s2", use_case="ich", held=HELD)
    (count, oldest), = approvals.pending_by_use_case().values()
    assert count == 2 and dt.datetime.now(dt.UTC) - oldest < dt.timedelta(minutes=1)
    assert approvals.decide("nothing-held", approve=True, by="k1", role="reader").outcome == "none"

    first = approvals.decide("r1", approve=True, by="k1", role="reader", comment="seen")
    assert (first.outcome, first.state, first.decided_by) == ("decided", "approved", "k1")
    assert approvals.decide("r1", approve=True, by="k2", role="reader").outcome == "unchanged"
    late = approvals.decide("r1", approve=False, by="k2", role="clinical-lead")
    assert (late.outcome, late.state, late.decided_by) == ("conflict", "approved", "k1"), "the first decision stands"
    assert approvals.decide("r2", approve=False, by="k3", role="clinical-lead").state == "rejected"
    assert approvals.pending_by_use_case() == {}

    decided = {r["result_key"]: r for r in approvals.decided()}
    assert set(decided) == {"r1", "r2"} and decided["r1"]["held"] == HELD and decided["r1"]["comment"] == "seen"
    assert approvals.complete("r1", 0, state="released") and not approvals.complete("r1", 0, state="released")
    assert not approvals.complete("r2", 0, state="released"), "a rejected result is never released"
    assert approvals.complete("r2", 0, state="dropped")
    assert approvals.decided() == []
    assert approvals.decide("r1", approve=True, by="k1", role="reader").outcome == "unchanged", "released = approved"
    assert approvals.state("r2")["state"] == "dropped"


def test_concurrent_decisions_leave_exactly_one(approvals):
    approvals.hold(result_key="r9", revision=0, study_key="s9", use_case="ich", held=HELD)
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def decide(i: int) -> None:
        barrier.wait()
        outcomes.append(approvals.decide("r9", approve=i % 2 == 0, by=f"k{i}", role="reader").outcome)

    threads = [threading.Thread(target=decide, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("decided") == 1 and len(outcomes) == 6


def test_an_accepted_draft_is_stored_once_per_revision(approvals):
    assert approvals.record_draft(result_key="r1", revision=0, use_case="ich", text="DRAFT\nline", by="k1")
    assert not approvals.record_draft(result_key="r1", revision=0, use_case="ich", text="other", by="k2")
    assert approvals.record_draft(result_key="r1", revision=1, use_case="ich", text="amended", by="k1")
    assert [(d["revision"], d["text"]) for d in approvals.accepted_drafts()] == [(0, "DRAFT\nline"), (1, "amended")]
    assert approvals.complete_draft("r1", 0, state="queued") and not approvals.complete_draft("r1", 0, state="queued")
    assert approvals.complete_draft("r1", 1, state="not-sent")
    assert approvals.accepted_drafts() == [] and {d["state"] for d in approvals.drafts()} == {"queued", "not-sent"}


def test_an_amendment_carries_an_approval_over_but_not_a_rejection(approvals):
    approvals.hold(result_key="ra", revision=0, study_key="s", use_case="ich", held=HELD)
    approvals.decide("ra", approve=True, by="k1", role="reader")
    approvals.complete("ra", 0, state="released")
    approvals.hold(result_key="ra", revision=1, study_key="s", use_case="ich", held=HELD)
    (carried,) = approvals.decided()
    assert (carried["revision"], carried["state"], carried["decided_by"]) == (1, "approved", "k1")
    assert approvals.pending_by_use_case() == {}

    approvals.hold(result_key="rr", revision=0, study_key="s", use_case="ich", held=HELD)
    approvals.decide("rr", approve=False, by="k2", role="reader")
    approvals.hold(result_key="rr", revision=1, study_key="s", use_case="ich", held=HELD)
    assert approvals.state("rr")["state"] == "pending", "a rejected result's amendment is asked again"
