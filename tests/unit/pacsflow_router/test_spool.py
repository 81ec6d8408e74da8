"""Spool: durable, byte-exact, indexed, never named after UIDs; full and unparseable data refused."""

from __future__ import annotations

import copy
import sqlite3
import threading

import pytest

from pacsflow_router.errors import SpoolFullError, UnparseableInstanceError
from pacsflow_router.ingest.spool import Spool, parse_index_attributes
from pacsflow_router.models import phantom
from tests.peers.dicomfiles import part10


@pytest.fixture(scope="module")
def study():
    datasets, _ = phantom.generate_study(7, lesion=False, slices=4, rows=32, cols=32)
    return datasets


def test_store_is_byte_exact_indexed_and_not_named_after_uids(tmp_path, study):
    spool = Spool(tmp_path, 0.999)
    encoded = part10(study[0])
    stored = spool.store(encoded)
    assert stored.path.read_bytes() == encoded
    assert stored.study_uid == study[0].StudyInstanceUID
    assert stored.sop_instance_uid == study[0].SOPInstanceUID
    assert stored.modality == "CT"
    for uid in (study[0].StudyInstanceUID, study[0].SeriesInstanceUID, study[0].SOPInstanceUID):
        assert uid not in str(stored.path)
    assert not list(stored.path.parent.glob("*.part"))
    db = sqlite3.connect(tmp_path / "state.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT count(*) FROM instances").fetchone()[0] == 1


def test_index_survives_reopen(tmp_path, study):
    spool = Spool(tmp_path, 0.999)
    for ds in study:
        spool.store(part10(ds))
    spool.close()
    reopened = Spool(tmp_path, 0.999)
    instances = reopened.instances(study[0].StudyInstanceUID)
    assert [i.sop_instance_uid for i in instances] == [ds.SOPInstanceUID for ds in study]
    assert all(i.path.is_file() for i in instances)


def test_duplicate_sop_instance_keeps_one_copy(tmp_path, study):
    spool = Spool(tmp_path, 0.999)
    first = spool.store(part10(study[0]))
    again = spool.store(part10(study[0]))
    assert again.duplicate and again.path == first.path
    assert spool.count() == 1
    assert len(list((tmp_path / "instances").iterdir())) == 1


def test_watermark_refuses_before_writing(tmp_path, study):
    spool = Spool(tmp_path, 1e-9)
    with pytest.raises(SpoolFullError, match="spoolMaxDiskUsage"):
        spool.store(part10(study[0]))
    assert spool.count() == 0
    assert not list((tmp_path / "instances").iterdir())


@pytest.mark.parametrize("payload", [b"", b"not dicom at all" * 50, b"\0" * 128 + b"DICM" + b"\xff" * 300])
def test_garbage_is_unparseable_and_nothing_is_stored(tmp_path, payload):
    spool = Spool(tmp_path, 0.999)
    with pytest.raises(UnparseableInstanceError):
        spool.store(payload)
    assert spool.count() == 0
    assert not list((tmp_path / "instances").iterdir())


def test_instance_without_study_uid_is_refused(tmp_path, study):
    ds = copy.deepcopy(study[0])
    del ds.StudyInstanceUID
    with pytest.raises(UnparseableInstanceError, match="StudyInstanceUID"):
        Spool(tmp_path, 0.999).store(part10(ds))


def test_recovery_drops_partial_files_and_indexes_complete_ones(tmp_path, study):
    spool = Spool(tmp_path, 0.999)
    spool.store(part10(study[0]))
    spool.close()
    # A crash after rename but before the index commit leaves a complete, unindexed file; one before rename a .part.
    (tmp_path / "instances" / "0123456789abcdef0123456789abcdef.dcm").write_bytes(part10(study[1]))
    (tmp_path / "instances" / "fedcba9876543210fedcba9876543210.part").write_bytes(b"half")
    reopened = Spool(tmp_path, 0.999)
    assert {i.sop_instance_uid for i in reopened.instances(study[0].StudyInstanceUID)} == {
        study[0].SOPInstanceUID, study[1].SOPInstanceUID}
    assert not list((tmp_path / "instances").glob("*.part"))


def test_an_index_commit_lost_to_power_loss_is_rebuilt_from_the_file(tmp_path, study):
    """The instance's index commit skips the WAL fsync (synchronous=NORMAL): the fdatasync'ed file is the durable
    copy, and a commit that power loss took back is as if it never happened; start-up re-indexes the file."""
    spool = Spool(tmp_path, 0.999)
    kept, lost = spool.store(part10(study[0])), spool.store(part10(study[1]))
    assert spool.execute("PRAGMA synchronous") == [(2,)]  # FULL again for everything that is not an instance index
    with spool.transaction() as db:  # undo the second instance's commit, as a lost WAL tail would
        db.execute("DELETE FROM instances WHERE sop_instance_uid = ?", (lost.sop_instance_uid,))
        db.execute("UPDATE studies SET instance_count = 1")
    spool.close()
    reopened = Spool(tmp_path, 0.999)
    assert [i.sop_instance_uid for i in reopened.instances(kept.study_uid)] == [
        kept.sop_instance_uid, lost.sop_instance_uid]
    assert reopened.instances(kept.study_uid)[1].path.read_bytes() == part10(study[1])
    assert reopened.execute("SELECT instance_count FROM studies") == [(2,)]


def test_store_received_writes_the_parts_in_order(tmp_path, study):
    encoded = part10(study[2])
    cut = 1000
    stored = Spool(tmp_path, 0.999).store_received((encoded[:cut], memoryview(encoded)[cut:]),
                                                   parse_index_attributes(encoded))
    assert stored.path.read_bytes() == encoded and stored.size == len(encoded)


def test_concurrent_stores_from_many_threads(tmp_path):
    datasets, _ = phantom.generate_study(8, lesion=False, slices=24, rows=16, cols=16)
    spool = Spool(tmp_path, 0.999)
    encoded = [part10(ds) for ds in datasets]
    errors: list[BaseException] = []

    def send(chunk):
        try:
            for e in chunk:
                spool.store(e)
                spool.store(e)  # every instance twice: duplicates race with each other too
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised on the test thread
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(encoded[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert spool.count() == 24
    assert len(list((tmp_path / "instances").iterdir())) == 24
