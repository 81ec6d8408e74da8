"""Study state: due after the stable window, one result per use case, durable across restarts, late instances."""

from __future__ import annotations

import time

import pytest

from pacsflow_router.domain import study_key
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.ingest.studies import StudyTracker
from pacsflow_router.models import phantom
from tests.peers.dicomfiles import part10


@pytest.fixture(scope="module")
def two_studies():
    a, _ = phantom.generate_study(11, lesion=False, slices=3, rows=16, cols=16)
    b, _ = phantom.generate_study(12, lesion=True, slices=2, rows=16, cols=16)
    return a, b


def test_study_is_due_only_after_stable_window(tmp_path, two_studies):
    spool = Spool(tmp_path, 0.999)
    tracker = StudyTracker(spool, stable_seconds=30)
    a, _ = two_studies
    for ds in a:
        spool.store(part10(ds))
    now = time.time()
    assert tracker.due(now, 30) == []
    assert tracker.in_progress() == 1 and tracker.queue_depth(now) == 0
    (ref,) = tracker.due(now + 31, 30)
    assert ref.study_uid == a[0].StudyInstanceUID
    assert ref.key == study_key(a[0].StudyInstanceUID)
    assert [spool_path.split("/")[-1] for spool_path in ref.paths] == [
        i.path.name for i in spool.instances(a[0].StudyInstanceUID)]
    assert len(ref.paths) == 3
    assert tracker.queue_depth(now + 31) == 1


def test_new_instance_restarts_the_window(tmp_path, two_studies):
    spool = Spool(tmp_path, 0.999)
    tracker = StudyTracker(spool)
    a, _ = two_studies
    spool.store(part10(a[0]))
    first = tracker.due(time.time() + 100, 0)[0].last_received
    time.sleep(0.01)
    spool.store(part10(a[1]))
    assert tracker.due(first + 0.001, 0) == []  # the study's clock moved past "first"


def test_mark_done_is_unique_and_idempotent(tmp_path, two_studies):
    tracker = StudyTracker(Spool(tmp_path, 0.999))
    uid = two_studies[0][0].StudyInstanceUID
    assert not tracker.is_done(uid, "ich-head-ct")
    assert tracker.mark_done(uid, "ich-head-ct", "reported") is True
    assert tracker.mark_done(uid, "ich-head-ct", "error") is False
    assert tracker.outcome(uid, "ich-head-ct") == "reported"
    assert tracker.is_done(uid, "ich-head-ct") and not tracker.is_done(uid, "other")


def test_restart_resumes_unfinished_and_remembers_done(tmp_path, two_studies):
    a, b = two_studies
    spool = Spool(tmp_path, 0.999)
    tracker = StudyTracker(spool)
    for ds in a + b:
        spool.store(part10(ds))
    tracker.mark_done(a[0].StudyInstanceUID, "uc1", "reported")
    tracker.mark_done(b[0].StudyInstanceUID, "uc1", "reported")
    tracker.finish(b[0].StudyInstanceUID)
    spool.close()  # what kill -9 leaves behind is the committed database; nothing is held in memory

    tracker = StudyTracker(Spool(tmp_path, 0.999))
    due = tracker.due(time.time() + 60, 0)
    assert [r.study_uid for r in due] == [a[0].StudyInstanceUID]
    assert tracker.is_done(a[0].StudyInstanceUID, "uc1") and not tracker.is_done(a[0].StudyInstanceUID, "uc2")
    assert tracker.is_finished(b[0].StudyInstanceUID)
    assert tracker.in_progress() == 1


def test_late_instance_reopens_the_study_but_a_resent_one_does_not(tmp_path, two_studies):
    a, _ = two_studies
    spool = Spool(tmp_path, 0.999)
    tracker = StudyTracker(spool)
    spool.store(part10(a[0]))
    (ref,) = tracker.due(time.time() + 60, 0)
    tracker.mark_done(a[0].StudyInstanceUID, "uc1", "reported")
    assert tracker.finish(a[0].StudyInstanceUID, ref.last_received)
    assert tracker.due(time.time() + 60, 0) == []

    resent = spool.store(part10(a[0]))
    assert resent.duplicate and not resent.late
    assert tracker.due(time.time() + 60, 0) == [], "a re-sent instance re-opens nothing"

    late = spool.store(part10(a[1]))
    assert late.late and late.path.read_bytes() == part10(a[1])
    assert tracker.late_instances() == 1
    assert not tracker.is_finished(a[0].StudyInstanceUID)
    assert tracker.due(late.received_at, 30) == [], "due again only after its completion window"
    (again,) = tracker.due(time.time() + 60, 0)
    assert len(again.paths) == 2 and again.last_received >= late.received_at, "late instances are analysed too"
    assert tracker.is_done(a[0].StudyInstanceUID, "uc1"), "earlier results stay (the pipeline decides on amending)"


def test_finish_leaves_a_study_open_when_an_instance_arrived_during_processing(tmp_path, two_studies):
    a, _ = two_studies
    spool = Spool(tmp_path, 0.999)
    tracker = StudyTracker(spool)
    spool.store(part10(a[0]))
    (ref,) = tracker.due(time.time() + 60, 0)
    time.sleep(0.01)
    spool.store(part10(a[1]))  # arrives while the pipeline works on ref
    assert not tracker.finish(a[0].StudyInstanceUID, ref.last_received)
    (again,) = tracker.due(time.time() + 60, 0)
    assert len(again.paths) == 2
    assert tracker.finish(a[0].StudyInstanceUID, again.last_received)


def test_report_records_remember_the_latest_revision(tmp_path, two_studies):
    from pacsflow_router.ingest.studies import ReportRecord

    tracker = StudyTracker(Spool(tmp_path, 0.999))
    uid = two_studies[0][0].StudyInstanceUID
    assert tracker.latest_report(uid, "uc1") is None
    first = ReportRecord(0, "digest-a", "1.2.3", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.3.4")
    assert tracker.record_report(uid, "uc1", first)
    assert not tracker.record_report(uid, "uc1", first), "a repeat after a crash changes nothing"
    assert tracker.record_report(uid, "uc1", ReportRecord(1, "digest-b", "1.2.5", first.sr_sop_class_uid, "1.2.5.6"))
    assert tracker.latest_report(uid, "uc1") == ReportRecord(1, "digest-b", "1.2.5", first.sr_sop_class_uid, "1.2.5.6")
    assert tracker.latest_report(uid, "uc2") is None


def test_restart_restarts_the_completion_window_but_keeps_last_received(tmp_path, two_studies):
    a, _ = two_studies
    spool = Spool(tmp_path, 0.999)
    spool.store(part10(a[0]))
    an_hour_ago = time.time() - 3600
    spool.execute("UPDATE studies SET last_received = ?", (an_hour_ago,))  # received long before the crash
    assert len(StudyTracker(spool).due(time.time(), 30)) == 1
    spool.close()

    tracker = StudyTracker(Spool(tmp_path, 0.999), stable_seconds=30)
    now = time.time()
    assert tracker.due(now, 30) == []  # a resend after the restart still joins the study
    assert tracker.queue_depth(now) == 0 and tracker.in_progress() == 1
    (ref,) = tracker.due(now + 31, 30)
    assert ref.last_received == an_hour_ago
