"""Write-ahead spool, end to end: instances acknowledged into the segments only, router kill -9'd, one SR at the PACS.

The router runs with its checkpointer paused (``PACSFLOW_ROUTER_TEST_PAUSE_CHECKPOINTER=1``, test-only): every
acknowledged instance is then in a write-ahead segment and in neither the instance files nor the index when the
router dies. The restart replays them before its DICOM port opens; the SR is counted at the real Orthanc.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.e2e.conftest import audit_records, wait_for
from tests.e2e.delivery import assert_delivered_once, evidence_uids, sop_uids, stop_when_idle, stored_srs
from tests.peers.dcmtk import storescu
from tests.peers.net import eventually
from tests.peers.router import use_case

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TIMEOUT = 180


def _indexed(spool: Path, study_uid: str) -> int:
    db = sqlite3.connect(spool / "state.db")
    try:
        return db.execute("SELECT count(*) FROM instances WHERE study_uid = ?", (study_uid,)).fetchone()[0]
    finally:
        db.close()


def test_kill9_with_acknowledged_instances_only_in_segments_gives_exactly_one_sr(pacs, make_router, studies):
    router = make_router([use_case("ich", "assistive")], pacs_port=pacs.dicom_port, stable_seconds=3600,
                         spoolWriteAhead=True)
    router.env["PACSFLOW_ROUTER_TEST_PAUSE_CHECKPOINTER"] = "1"
    router.start()
    spool = Path(router.config["spoolDir"])
    # The first instances a router receives take the direct path while its first segment is written out.
    warm_up, _ = studies(46, lesion=False, slices=2, rows=64, cols=64)
    assert len(storescu(router.port, warm_up).acknowledged) == 2
    eventually(lambda: list((spool / "wal").glob("segment-*.wal")), "a write-ahead segment", 60,
               context=router.log)
    paths, truth = studies(45, lesion=True)
    assert len(storescu(router.port, paths).acknowledged) == len(paths)
    assert _indexed(spool, truth.study_instance_uid) == 0, "every instance must be only in the segments"
    router.kill9()

    router.env.clear()
    router.config["completion"]["stableSeconds"] = 1
    router.write_config(router.config)
    router.start()
    assert _indexed(spool, truth.study_instance_uid) == len(paths), "replayed before the DICOM port opened"
    wait_for(lambda: len(stored_srs(pacs, truth.study_instance_uid)) == 1, TIMEOUT, "the SR after replay", router)
    stop_when_idle(router)
    assert_delivered_once(pacs, truth.study_instance_uid)
    (sr,) = stored_srs(pacs, truth.study_instance_uid)
    assert evidence_uids(sr) == sop_uids(paths), "the SR must cover every acknowledged slice"
    assert len(audit_records(router, truth)) == 1
    assert "write-ahead log: " in router.log() and "record(s) replayed" in router.log()
