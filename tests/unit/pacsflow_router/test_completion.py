"""Study completion by MPPS and per-modality stable windows: the SQL in ingest.completion and ingest.studies.

The MPPS records are written through :class:`MppsStore` (what the SCP calls); the DIMSE side against a real modality
peer is in tests/integration/test_mpps.py.
"""

from __future__ import annotations

import time

import pydicom
import pytest
from pydicom.uid import generate_uid

from pacsflow_router.ingest.completion import (
    COMPLETED,
    DISCONTINUED,
    IN_PROGRESS,
    ListedInstance,
    MppsStore,
    Outcome,
    PerformedStep,
)
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.ingest.studies import StudyTracker
from pacsflow_router.models import phantom
from tests.peers.dicomfiles import part10

WINDOW = 600.0  # long enough that only an MPPS can complete a study within a test


def study(seed: int, slices: int = 3, modality: str = "CT") -> list[pydicom.Dataset]:
    datasets, _ = phantom.generate_study(seed, lesion=False, slices=slices, rows=16, cols=16)
    for ds in datasets:
        ds.Modality = modality
    return datasets


def listed(datasets: list[pydicom.Dataset]) -> tuple[ListedInstance, ...]:
    return tuple(ListedInstance(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)) for ds in datasets)


@pytest.fixture
def parts(tmp_path):
    spool = Spool(tmp_path, 0.999)
    yield spool, StudyTracker(spool, stable_seconds=WINDOW), MppsStore(spool)
    spool.close()


def due_uids(tracker: StudyTracker, now: float | None = None) -> list[str]:
    return [r.study_uid for r in tracker.due(time.time() if now is None else now)]


def test_mpps_before_any_image_then_completed_makes_the_study_due_at_once(parts):
    spool, tracker, store = parts
    images = study(1)
    uid, study_uid = generate_uid(), str(images[0].StudyInstanceUID)
    assert store.create(PerformedStep(uid, IN_PROGRESS, (study_uid,), ())) is Outcome.CREATED
    for ds in images:
        spool.store(part10(ds))
    assert due_uids(tracker) == [], "IN PROGRESS: the modality is still acquiring"
    assert tracker.completion_reason(study_uid) == "stable-window: MPPS still IN PROGRESS"
    assert store.update(uid, COMPLETED, listed(images)) is Outcome.UPDATED
    assert due_uids(tracker) == [study_uid]
    assert tracker.queue_depth() == 1
    assert tracker.completion_reason(study_uid) == "mpps-completed"


def test_images_after_completed_complete_the_study_with_the_last_listed_one(parts):
    spool, tracker, store = parts
    images = study(2, slices=4)
    uid, study_uid = generate_uid(), str(images[0].StudyInstanceUID)
    store.create(PerformedStep(uid, IN_PROGRESS, (study_uid,)))
    store.update(uid, COMPLETED, listed(images))
    for ds in images[:-1]:
        spool.store(part10(ds))
        assert due_uids(tracker) == []
    assert tracker.completion_reason(study_uid) == "mpps-incomplete: 1 listed instance(s) never arrived"
    spool.store(part10(images[-1]))
    assert due_uids(tracker) == [study_uid]


def test_listed_instances_that_never_arrive_fall_back_to_the_stable_window(parts):
    spool, tracker, store = parts
    images = study(3, slices=5)
    uid, study_uid = generate_uid(), str(images[0].StudyInstanceUID)
    store.create(PerformedStep(uid, IN_PROGRESS, (study_uid,)))
    for ds in images[:3]:
        spool.store(part10(ds))
    store.update(uid, COMPLETED, listed(images))
    assert due_uids(tracker) == []
    assert due_uids(tracker, time.time() + WINDOW + 1) == [study_uid]
    assert tracker.completion_reason(study_uid) == "mpps-incomplete: 2 listed instance(s) never arrived"


def test_discontinued_is_due_with_what_was_acquired_and_says_so(parts):
    spool, tracker, store = parts
    images = study(4, slices=4)
    uid, study_uid = generate_uid(), str(images[0].StudyInstanceUID)
    store.create(PerformedStep(uid, IN_PROGRESS, (study_uid,)))
    for ds in images[:2]:  # the examination stopped after two images
        spool.store(part10(ds))
    store.update(uid, DISCONTINUED, listed(images[:2]))
    assert due_uids(tracker) == [study_uid]
    assert tracker.completion_reason(study_uid) == "mpps-discontinued"


def test_discontinued_with_missing_listed_instances_waits_for_the_window(parts):
    spool, tracker, store = parts
    images = study(5, slices=3)
    uid, study_uid = generate_uid(), str(images[0].StudyInstanceUID)
    store.create(PerformedStep(uid, IN_PROGRESS, (study_uid,)))
    spool.store(part10(images[0]))
    store.update(uid, DISCONTINUED, listed(images))
    assert due_uids(tracker) == []
    assert tracker.completion_reason(study_uid) == (
        "mpps-incomplete: 2 listed instance(s) never arrived (MPPS DISCONTINUED)")


def test_without_mpps_the_study_keeps_its_stable_window(parts):
    spool, tracker, _ = parts
    images = study(6)
    for ds in images:
        spool.store(part10(ds))
    assert due_uids(tracker) == []
    assert due_uids(tracker, time.time() + WINDOW + 1) == [str(images[0].StudyInstanceUID)]
    assert tracker.completion_reason(str(images[0].StudyInstanceUID)) == "stable-window"


def test_one_step_still_in_progress_keeps_the_window(parts):
    spool, tracker, store = parts
    images = study(7, slices=4)
    study_uid = str(images[0].StudyInstanceUID)
    first, second = generate_uid(), generate_uid()
    store.create(PerformedStep(first, IN_PROGRESS, (study_uid,)))
    store.create(PerformedStep(second, IN_PROGRESS, (study_uid,)))
    for ds in images:
        spool.store(part10(ds))
    store.update(first, COMPLETED, listed(images[:2]))
    assert due_uids(tracker) == []
    store.update(second, COMPLETED, listed(images[2:]))
    assert due_uids(tracker) == [study_uid]


def test_unlisted_instance_after_completed_falls_back_to_the_window(parts):
    spool, tracker, store = parts
    images = study(8, slices=3)
    study_uid = str(images[0].StudyInstanceUID)
    uid = generate_uid()
    store.create(PerformedStep(uid, IN_PROGRESS, (study_uid,)))
    for ds in images[:2]:
        spool.store(part10(ds))
    store.update(uid, COMPLETED, listed(images[:2]))
    assert due_uids(tracker) == [study_uid]
    time.sleep(0.01)
    spool.store(part10(images[2]))  # e.g. a workstation adds a reformat: something beyond the step still sends
    assert due_uids(tracker) == []
    assert tracker.completion_reason(study_uid).startswith("stable-window: ")
    assert due_uids(tracker, time.time() + WINDOW + 1) == [study_uid]


def test_late_instance_after_finish_waits_for_the_window_as_before(parts):
    spool, tracker, store = parts
    images = study(9, slices=3)
    study_uid = str(images[0].StudyInstanceUID)
    uid = generate_uid()
    store.create(PerformedStep(uid, IN_PROGRESS, (study_uid,)))
    for ds in images[:2]:
        spool.store(part10(ds))
    store.update(uid, COMPLETED, listed(images[:2]))
    (ref,) = tracker.due()
    assert tracker.finish(study_uid, ref.last_received)
    assert due_uids(tracker) == []
    late = spool.store(part10(images[2]))
    assert late.late
    assert due_uids(tracker) == [], "a late instance re-opens the study after its window, not at once"
    assert due_uids(tracker, late.received_at + WINDOW + 1) == [study_uid]


def test_instance_arriving_during_processing_keeps_the_study_open(parts):
    spool, tracker, store = parts
    images = study(10, slices=3)
    study_uid = str(images[0].StudyInstanceUID)
    uid = generate_uid()
    store.create(PerformedStep(uid, IN_PROGRESS, (study_uid,)))
    for ds in images[:2]:
        spool.store(part10(ds))
    store.update(uid, COMPLETED, listed(images[:2]))
    (ref,) = tracker.due()
    time.sleep(0.01)
    spool.store(part10(images[2]))  # arrives while the pipeline processes ``ref``
    assert not tracker.finish(study_uid, ref.last_received)
    assert due_uids(tracker, time.time() + WINDOW + 1) == [study_uid]


def test_grouped_procedure_waits_for_the_instances_of_every_study(parts):
    spool, tracker, store = parts
    a, b = study(11, slices=2), study(12, slices=2)
    uid = generate_uid()
    uids = (str(a[0].StudyInstanceUID), str(b[0].StudyInstanceUID))
    store.create(PerformedStep(uid, IN_PROGRESS, uids))
    store.update(uid, COMPLETED, listed(a + b))
    for ds in a + b[:1]:
        spool.store(part10(ds))
    assert due_uids(tracker) == []
    spool.store(part10(b[1]))
    assert sorted(due_uids(tracker)) == sorted(uids)


def test_per_modality_windows(tmp_path):
    spool = Spool(tmp_path, 0.999)
    tracker = StudyTracker(spool, stable_seconds=30, by_modality={"CT": 10, "MR": 120})
    ct, mr, us = study(21, modality="CT"), study(22, modality="MR"), study(23, modality="US")
    for ds in ct + mr + us:
        spool.store(part10(ds))
    now = time.time()
    uid = {name: str(s[0].StudyInstanceUID) for name, s in (("CT", ct), ("MR", mr), ("US", us))}
    assert due_uids(tracker, now + 11) == [uid["CT"]]
    assert tracker.queue_depth(now + 11) == 1
    assert sorted(due_uids(tracker, now + 31)) == sorted([uid["CT"], uid["US"]])
    assert sorted(due_uids(tracker, now + 121)) == sorted(uid.values())
    assert tracker.window("MR") == 120 and tracker.window(None) == 30
    # An explicit window overrides the per-modality ones (0: everything received so far).
    assert len(tracker.due(now + 1, 0)) == 3


def test_the_first_instances_modality_is_the_studys(tmp_path):
    spool = Spool(tmp_path, 0.999)
    tracker = StudyTracker(spool, stable_seconds=30, by_modality={"MR": 120})
    images = study(24, slices=2, modality="MR")
    images[1].Modality = "OT"  # a secondary capture later in the study does not change the study's window
    for ds in images:
        spool.store(part10(ds))
    assert due_uids(tracker, time.time() + 31) == []
    assert spool.execute("SELECT modality FROM studies") == [("MR",)]


def test_older_spool_gains_the_modality_column(tmp_path):
    spool = Spool(tmp_path, 0.999)
    for ds in study(25, modality="MR"):
        spool.store(part10(ds))
    spool.execute("ALTER TABLE studies DROP COLUMN modality")  # as a spool written before per-modality windows
    spool.close()
    spool = Spool(tmp_path, 0.999)
    assert spool.execute("SELECT modality FROM studies") == [("MR",)]
    tracker = StudyTracker(spool, stable_seconds=30, by_modality={"MR": 120})
    assert due_uids(tracker, time.time() + 31) == []
    assert len(due_uids(tracker, time.time() + 121)) == 1


def test_store_answers_duplicate_unknown_and_final(parts):
    _, _, store = parts
    uid, study_uid = generate_uid(), generate_uid()
    step = PerformedStep(uid, IN_PROGRESS, (study_uid,), (ListedInstance("1.2.3", "1.2.3.4"),), "CT")
    assert store.create(step) is Outcome.CREATED
    assert store.create(PerformedStep(uid, IN_PROGRESS, (generate_uid(),))) is Outcome.DUPLICATE
    assert store.update(generate_uid(), COMPLETED, None) is Outcome.NO_SUCH_INSTANCE
    # N-SET without a Performed Series Sequence keeps the list; with one, it replaces it.
    assert store.update(uid, None, None) is Outcome.UPDATED and store.status(uid) == IN_PROGRESS
    assert store.listed(uid) == [ListedInstance("1.2.3", "1.2.3.4")]
    assert store.update(uid, COMPLETED, [ListedInstance("1.2.3", "1.2.3.5")]) is Outcome.UPDATED
    assert store.listed(uid) == [ListedInstance("1.2.3", "1.2.3.5")]
    assert store.update(uid, DISCONTINUED, []) is Outcome.ALREADY_FINAL
    assert store.status(uid) == COMPLETED and store.listed(uid) == [ListedInstance("1.2.3", "1.2.3.5")]


def test_mpps_state_survives_a_restart(tmp_path):
    spool = Spool(tmp_path, 0.999)
    images = study(26)
    uid, study_uid = generate_uid(), str(images[0].StudyInstanceUID)
    MppsStore(spool).create(PerformedStep(uid, IN_PROGRESS, (study_uid,)))
    MppsStore(spool).update(uid, COMPLETED, listed(images))
    spool.close()  # what kill -9 leaves behind is the committed database
    spool = Spool(tmp_path, 0.999)
    tracker = StudyTracker(spool, stable_seconds=WINDOW)
    for ds in images:
        spool.store(part10(ds))
    assert due_uids(tracker) == [study_uid]
    assert MppsStore(spool).status(uid) == COMPLETED
