"""Nothing acknowledged is ever lost: kill -9 the router and take the PACS down at the worst moments.

Each test counts C-STORE requests at the real Orthanc (its ledger, :mod:`tests.e2e.delivery`), not the SRs it keeps:
Orthanc answers Success to a re-sent SOP Instance UID and stores it once, so only the requests show a duplicate send.
Exactly one request per study and use case, however often the router died; the count is taken after the router has
emptied its outbox and stopped, so nothing can follow it.
"""

from __future__ import annotations

import pytest

from tests.e2e.conftest import audit_records, metric_value, wait_for
from tests.e2e.delivery import assert_delivered_once, evidence_uids, sop_uids, stop_when_idle, stored_srs
from tests.peers.dcmtk import storescu
from tests.peers.gate import storescu_killed_mid_stream
from tests.peers.router import use_case
from tests.peers.srcheck import check_sr

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TIMEOUT = 180


def _sr_count(pacs, truth) -> int:
    return len(pacs.instances(modality="SR", study_uid=truth.study_instance_uid))


def test_kill9_between_ack_and_export_gives_exactly_one_sr(pacs, make_router, studies):
    """Acknowledged, not yet processed (completion window still open), router killed: restart finishes it once."""
    # An hour-long window cannot close between the last acknowledgement and the kill, however slow the machine.
    router = make_router([use_case("ich", "assistive")], pacs_port=pacs.dicom_port, stable_seconds=3600).start()
    paths, truth = studies(41, lesion=True)
    result = storescu(router.port, paths)
    assert len(result.acknowledged) == len(paths)
    router.kill9()
    assert _sr_count(pacs, truth) == 0

    router.config["completion"]["stableSeconds"] = 1
    router.write_config(router.config)
    router.start()
    wait_for(lambda: _sr_count(pacs, truth) == 1, TIMEOUT, "the SR after restart", router)
    stop_when_idle(router)
    assert_delivered_once(pacs, truth.study_instance_uid)
    assert len(audit_records(router, truth)) == 1


def test_kill9_during_ingest_then_resend_gives_one_complete_result(pacs, make_router, studies, tmp_path):
    """The router dies mid-association; the modality resends the study; one SR over every slice, sent once.

    A gate between storescu and the router lets exactly 10 instances through and holds the 11th, so the kill lands
    mid-stream on any machine. The completion window is long while the router dies and the study is resent (a
    window closing in between would be a partial study followed by late instances: another behaviour, another
    test); once everything is back in the spool it is shortened by a hot reload and the study completes.
    """
    router = make_router([use_case("ich", "assistive")], pacs_port=pacs.dicom_port, stable_seconds=3600).start()
    paths, truth = studies(42, lesion=True, slices=40)
    killed = storescu_killed_mid_stream(router.port, paths, let_through=10, kill=router.kill9,
                                        log=tmp_path / "storescu-killed.log")
    assert len(killed.acknowledged) == 10, killed.output[-2000:]

    router.start()
    result = storescu(router.port, paths)  # what a modality does after a failed association: send again
    assert len(result.acknowledged) == len(paths)
    assert _sr_count(pacs, truth) == 0, "nothing may be reported before the study is complete"
    router.config["completion"]["stableSeconds"] = 1
    router.write_config(router.config)
    wait_for(lambda: _sr_count(pacs, truth) == 1, TIMEOUT, "the SR", router)
    stop_when_idle(router)
    assert_delivered_once(pacs, truth.study_instance_uid)
    (sr,) = stored_srs(pacs, truth.study_instance_uid)
    assert evidence_uids(sr) == sop_uids(paths), "the SR must cover every slice of the resent study"
    sr.save_as(tmp_path / "sr.dcm")
    assert check_sr(tmp_path / "sr.dcm").errors == []
    records = audit_records(router, truth)
    assert len(records) == 1 and records[0]["destination_status"] == "delivered"


def test_pacs_down_router_killed_then_both_back_delivers_exactly_once(pacs, make_router, studies):
    """SR queued while the PACS is down, router kill -9'd with it in the outbox, both return: delivered once."""
    router = make_router([use_case("ich", "triage", threshold=0.5)], pacs_port=pacs.dicom_port).start()
    pacs.stop()
    paths, truth = studies(43, lesion=True)
    assert len(storescu(router.port, paths).acknowledged) == len(paths)
    wait_for(lambda: audit_records(router, truth), TIMEOUT, "the result (queued in the outbox)", router)
    wait_for(lambda: metric_value(router, "pacsflow_sr_exports_total", destination="pacs", outcome="retrying") >= 1,
             60, "a failed delivery attempt while the PACS is down", router)
    assert metric_value(router, "pacsflow_outbox_pending") == 1
    router.kill9()

    pacs.start()
    router.start()
    wait_for(lambda: _sr_count(pacs, truth) == 1, TIMEOUT, "the SR once the PACS is back", router)
    wait_for(lambda: audit_records(router, truth)[0]["destination_status"] == "delivered", 30,
             "delivery in the audit trail", router)
    stop_when_idle(router)
    assert_delivered_once(pacs, truth.study_instance_uid)
    assert len(audit_records(router, truth)) == 1


def test_pacs_down_then_up_without_restart(pacs, make_router, studies):
    """The outbox retries with backoff and delivers when the PACS returns; the router keeps receiving meanwhile."""
    router = make_router([use_case("ich", "assistive")], pacs_port=pacs.dicom_port).start()
    pacs.stop()
    paths, truth = studies(44, lesion=False)
    assert len(storescu(router.port, paths).acknowledged) == len(paths)
    wait_for(lambda: metric_value(router, "pacsflow_sr_exports_total", destination="pacs", outcome="retrying") >= 1,
             TIMEOUT, "a failed delivery attempt", router)
    pacs.start()
    wait_for(lambda: _sr_count(pacs, truth) == 1, TIMEOUT, "delivery after the PACS came back", router)
    stop_when_idle(router)
    assert_delivered_once(pacs, truth.study_instance_uid)
