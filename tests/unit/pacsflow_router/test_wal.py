"""Write-ahead spool (ingest/wal.py): acknowledged = in a segment; replay, torn tails, rolling, no resurrection."""

from __future__ import annotations

import os
import time

import pytest

from pacsflow_router.ingest import wal
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.ingest.studies import StudyTracker
from pacsflow_router.models import phantom
from tests.peers.dicomfiles import part10
from tests.peers.net import eventually

SEGMENT = 256 << 10  # 256 KiB: about 60 of the 32x32 instances below, so a test rolls through segments


@pytest.fixture(scope="module")
def study():
    datasets, _ = phantom.generate_study(11, lesion=False, slices=40, rows=32, cols=32)
    return [part10(ds) for ds in datasets]


def _spool(path, *, paused: bool, segment: int = SEGMENT, segments: int = 4) -> Spool:
    return Spool(path, 0.999, write_ahead=True, checkpoint_paused=paused, wal_segment_bytes=segment,
                 wal_max_segments=segments)


def _ready(spool: Spool, warm_up: bytes) -> None:
    """Store one instance (the direct path: no segment yet) and wait for the first segments to be written out."""
    assert spool.wal is not None
    spool.store(warm_up)
    eventually(lambda: len(list(spool.wal.directory.glob("segment-*.wal"))) >= 1, "a segment written out", 10)
    eventually(lambda: spool.wal is not None and spool.wal._free, "a free segment", 10)


def _sop(encoded: bytes) -> str:
    from pacsflow_router.ingest.spool import parse_index_attributes
    return parse_index_attributes(encoded)[2]


def test_acknowledged_instances_wait_in_segments_then_replay_once(tmp_path, study):
    spool = _spool(tmp_path, paused=True)
    _ready(spool, study[0])
    before = time.time()
    acknowledged = [spool.store(e) for e in study[1:20]]
    assert spool.count() == 1, "paused checkpointer: only the warm-up (direct) instance is indexed"
    assert spool.wal is not None and spool.wal.appended == 19
    study_uid = acknowledged[0].study_uid
    assert spool.pending_studies() == {study_uid}
    assert StudyTracker(spool).due(time.time() + 3600, 0) == [], "a study with pending instances is not complete"
    spool.wal.stop()  # what a kill -9 leaves: records in segments, nothing indexed (the thread was paused)

    reopened = _spool(tmp_path, paused=False)
    assert reopened.wal is not None and reopened.wal.replayed == 19 and reopened.wal.torn == 0
    instances = {i.sop_instance_uid: i for i in reopened.instances(study_uid)}
    assert set(instances) == {_sop(e) for e in study[:20]}
    for stored, encoded in zip(acknowledged, study[1:20], strict=True):
        got = instances[stored.sop_instance_uid]
        assert got.path == stored.path and got.path.read_bytes() == encoded, "the name and bytes given at receipt"
        assert before <= got.received_at == stored.received_at, "the study clock is the receipt, not the replay"
        assert got.path.stat().st_mtime == pytest.approx(stored.received_at, abs=1e-3), "what _recover would read"
    (due,) = StudyTracker(reopened).due(time.time() + 3600, 0)
    assert len(due.paths) == 20
    reopened.close()

    # Replayed segments were re-stamped: a third start finds nothing to replay, nothing is doubled.
    third = _spool(tmp_path, paused=False)
    assert third.wal is not None and third.wal.replayed == 0
    assert third.count() == 20 and len(list((tmp_path / "instances").glob("*.dcm"))) == 20
    third.close()


def test_checkpointer_indexes_and_retires_segments(tmp_path, study):
    spool = _spool(tmp_path, paused=False)
    _ready(spool, study[0])
    woken = []
    spool.on_indexed.append(lambda: woken.append(1))
    for encoded in study[1:]:
        spool.store(encoded)
    eventually(lambda: spool.count() == len(study), "every instance indexed", 20)
    assert woken and spool.pending_studies() == set()
    assert spool.wal is not None and spool.wal.appended > 0
    # Idle with everything indexed: the current segment retires too (its records must not outlive their rows).
    eventually(lambda: spool.wal is not None and spool.wal._current is None, "the idle segment retired", 10)
    spool.close()
    reopened = _spool(tmp_path, paused=False)
    assert reopened.wal is not None and reopened.wal.replayed == 0, "indexed records must not come back"
    assert reopened.count() == len(study)
    reopened.close()


def test_segment_full_rolls_to_the_next(tmp_path, study):
    spool = _spool(tmp_path, paused=True, segment=64 << 10, segments=4)  # about 14 instances per segment
    _ready(spool, study[0])
    assert spool.wal is not None
    # Each roll takes the free segment; the checkpointer writes out the next one in the background.
    for encoded in study[1:30]:
        spool.store(encoded)
        eventually(lambda: spool.wal is not None and (spool.wal._free or len(spool.wal._segments) == 4),
                   "a free segment or all four in use", 10)
    used = {r.segment.path for r in spool.wal._pending.values()}
    assert len(used) >= 2, "the records span more than one segment"
    direct = spool.count() - 1
    spool.wal.stop()
    reopened = _spool(tmp_path, paused=False, segment=64 << 10)
    assert reopened.wal is not None and reopened.wal.replayed == 29 - direct
    assert reopened.count() == 30
    reopened.close()


def test_torn_tail_record_is_ignored_and_nothing_else_lost(tmp_path, study):
    spool = _spool(tmp_path, paused=True)
    _ready(spool, study[0])
    for encoded in study[1:10]:
        spool.store(encoded)
    assert spool.wal is not None
    last = max(spool.wal._pending.values(), key=lambda r: (r.segment.sequence, r.data_offset))
    path, tail = last.segment.path, last.data_offset + last.size
    spool.wal.stop()
    # The last record half-written (never acknowledged): its second half is zeros.
    fd = os.open(path, os.O_WRONLY)
    os.pwrite(fd, bytes(last.size // 2), tail - last.size // 2)
    os.close(fd)
    reopened = _spool(tmp_path, paused=False)
    assert reopened.wal is not None and reopened.wal.torn == 1 and reopened.wal.replayed == 8
    sops = {i.sop_instance_uid for i in reopened.instances(last.attributes[0])}
    assert sops == {_sop(e) for e in study[:9]}
    reopened.close()


def test_duplicate_while_pending_keeps_the_first_copy(tmp_path, study):
    spool = _spool(tmp_path, paused=True)
    _ready(spool, study[0])
    first = spool.store(study[1])
    again = spool.store(study[1])
    assert not first.duplicate and again.duplicate and again.path == first.path
    assert spool.wal is not None and spool.wal.appended == 1
    spool.wal.stop()
    reopened = _spool(tmp_path, paused=False)
    assert reopened.count() == 2 and len(list((tmp_path / "instances").glob("*.dcm"))) == 2
    reopened.close()


def test_record_larger_than_a_segment_is_stored_directly(tmp_path, study):
    spool = _spool(tmp_path, paused=True, segment=2 * wal.HEADER_BYTES)
    stored = spool.store(study[0])
    assert spool.count() == 1 and stored.path.read_bytes() == study[0]
    spool.close()
