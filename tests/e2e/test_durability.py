"""Nothing acknowledged is ever lost: kill -9 the router and take the PACS down at the worst moments.

Each test counts SRs in the real Orthanc: exactly one per study and use case, however often the router died.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.e2e.conftest import audit_records, metric_value, wait_for
from tests.peers.dcmtk import dcmtk_env, storescu, storescu_command
from tests.peers.router import use_case

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TIMEOUT = 180


def _sr_count(pacs, truth) -> int:
    return len(pacs.instances(modality="SR", study_uid=truth.study_instance_uid))


def test_kill9_between_ack_and_export_gives_exactly_one_sr(pacs, make_router, studies):
    """Acknowledged, not yet processed (completion window still open), router killed: restart finishes it once."""
    router = make_router([use_case("ich", "assistive")], pacs_port=pacs.dicom_port, stable_seconds=30).start()
    paths, truth = studies(41, lesion=True)
    result = storescu(router.port, paths)
    assert len(result.acknowledged) == len(paths)
    router.kill9()
    assert _sr_count(pacs, truth) == 0

    router.config["completion"]["stableSeconds"] = 1
    router.write_config(router.config)
    router.start()
    wait_for(lambda: _sr_count(pacs, truth) == 1, TIMEOUT, "the SR after restart", router)
    time.sleep(3)  # give a duplicate every chance to appear
    assert _sr_count(pacs, truth) == 1
    assert len(audit_records(router, truth)) == 1


def test_kill9_during_ingest_then_resend_gives_one_complete_result(pacs, make_router, studies):
    """The router dies mid-association; the modality resends the study; one SR over every slice."""
    router = make_router([use_case("ich", "assistive")], pacs_port=pacs.dicom_port, stable_seconds=3).start()
    paths, truth = studies(42, lesion=True, slices=40)
    proc = subprocess.Popen(storescu_command(router.port, paths), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dcmtk_env())
    wait_for(lambda: metric_value(router, "pacsflow_instances_received_total") >= 10, 60,
             "ten instances spooled", router)
    router.kill9()
    proc.communicate(timeout=60)
    router.start()
    result = storescu(router.port, paths)  # what a modality does after a failed association: send again
    assert len(result.acknowledged) == len(paths)
    wait_for(lambda: _sr_count(pacs, truth) == 1, TIMEOUT, "the SR", router)
    time.sleep(3)
    assert _sr_count(pacs, truth) == 1
    records = audit_records(router, truth)
    assert len(records) == 1 and records[0]["probability"] >= 0.5


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
    time.sleep(3)
    assert _sr_count(pacs, truth) == 1
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
    assert metric_value(router, "pacsflow_outbox_pending") == 0
