"""Decoding ahead of completion: the study loaded from predecoded instances is the one loaded from disk, and the
predecoder decodes only what the pipeline has not taken, within its memory bound."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
from pydicom.uid import generate_uid

from pacsflow_router.analysis.volume import decode_instance, load_study
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.ingest.studies import StudyTracker
from pacsflow_router.models import phantom
from pacsflow_router.predecode import Predecoder
from tests.peers.dicomfiles import part10


@pytest.fixture(scope="module")
def two_studies():
    a, _ = phantom.generate_study(21, lesion=True, slices=5, rows=32, cols=32)
    b, _ = phantom.generate_study(22, lesion=False, slices=3, rows=32, cols=32)
    return a, b


def _spooled(tmp_path, datasets):
    spool = Spool(tmp_path, 0.999)
    for ds in reversed(datasets):  # arrival order is not slice order
        spool.store(part10(ds))
    tracker = StudyTracker(spool, stable_seconds=0)
    return spool, tracker


def _same(left, right) -> None:
    assert [s.series_uid for s in left.series] == [s.series_uid for s in right.series]
    for a, b in zip(left.series, right.series, strict=True):
        assert [str(s.header.SOPInstanceUID) for s in a.slices] == [str(s.header.SOPInstanceUID) for s in b.slices]
        assert all(np.array_equal(x.pixels, y.pixels) for x, y in zip(a.slices, b.slices, strict=True))
        assert (a.skipped, a.missing) == (b.skipped, b.missing)
    assert left.unreadable == right.unreadable


def test_a_study_loaded_from_predecoded_instances_is_the_study_loaded_from_disk(tmp_path, two_studies):
    a, _ = two_studies
    spool, tracker = _spooled(tmp_path, a)
    damaged = copy.deepcopy(a[2])
    damaged.PixelData = damaged.PixelData[:100]  # truncated pixel data: skipped, reported, not fatal
    damaged.SOPInstanceUID = generate_uid(entropy_srcs=["test_predecode", "damaged"])
    spool.store(part10(damaged))
    (ref,) = tracker.due(time.time() + 1)
    predecoder = Predecoder(tracker)
    assert predecoder.decode_new() == 6
    assert predecoder.held_bytes() == 5 * 32 * 32 * 2
    decoded = predecoder.take(ref)
    assert set(decoded) == set(ref.paths)
    assert predecoder.held_bytes() == 0
    ahead = load_study(ref, decoded)
    _same(ahead, load_study(ref))
    assert [s.reason for s in ahead.series[0].skipped] == ["pixel data not decodable"]
    # Half decoded ahead, half at completion: still the same study.
    half = {p: decode_instance(p) for p in ref.paths[::2]}
    _same(load_study(ref, half), ahead)


def test_the_predecoder_leaves_taken_finished_and_over_budget_studies_alone(tmp_path, two_studies):
    a, b = two_studies
    spool, tracker = _spooled(tmp_path, a)
    (ref_a,) = tracker.due(time.time() + 1)
    predecoder = Predecoder(tracker)
    predecoder.take(ref_a)  # the pipeline took study a before anything was decoded: it decodes a itself
    for ds in b:
        spool.store(part10(ds))
    assert predecoder.decode_new() == 3  # b only
    ref_b = next(r for r in tracker.due(time.time() + 1) if r.study_uid != ref_a.study_uid)
    assert set(predecoder.take(ref_b)) == set(ref_b.paths)
    assert predecoder.take(ref_a) == {}
    predecoder.release(ref_a.study_uid)
    predecoder.release(ref_b.study_uid)
    tracker.finish(ref_b.study_uid)
    # Over budget: nothing more is held; a finished study's instances are never decoded again.
    full = Predecoder(tracker, max_bytes=0)
    assert full.decode_new() == 0 and full.held_bytes() == 0
    again = Predecoder(tracker)
    assert again.decode_new() == 5  # study a (unfinished) only


def test_the_background_thread_decodes_what_arrives(tmp_path, two_studies):
    a, _ = two_studies
    spool = Spool(tmp_path, 0.999)
    tracker = StudyTracker(spool, stable_seconds=0)
    predecoder = Predecoder(tracker, poll_seconds=30.0)
    predecoder.start()
    try:
        for ds in a:
            spool.store(part10(ds))
            predecoder.wake()  # what the DICOM receiver's on_stored does
        deadline = time.monotonic() + 20
        while predecoder.held_bytes() < 5 * 32 * 32 * 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        (ref,) = tracker.due(time.time() + 1)
        assert set(predecoder.take(ref)) == set(ref.paths)
    finally:
        predecoder.stop()


def test_next_due_at_is_the_end_of_the_next_window(tmp_path, two_studies):
    a, _ = two_studies
    spool = Spool(tmp_path, 0.999)
    tracker = StudyTracker(spool, stable_seconds=30, by_modality={"MR": 5})
    assert tracker.next_due_at() is None
    spool.store(part10(a[0]))
    (last,) = [i.received_at for i in spool.instances(a[0].StudyInstanceUID)]
    assert tracker.next_due_at(last) == pytest.approx(last + 30)
    assert tracker.next_due_at(last + 31) is None  # due already: nothing is waiting for its window
    tracker.finish(a[0].StudyInstanceUID)
    assert tracker.next_due_at(last) is None
