"""Exactly-once checks at the receiver: C-STORE requests the PACS got, not the SRs it kept.

Orthanc (like most PACS) answers Success to a re-sent SOP Instance UID and keeps one copy, so counting stored SRs
cannot see a duplicate send. These helpers count requests in the Orthanc peer's ledger
(:meth:`tests.peers.orthanc.Orthanc.received`) and stop the router once it has nothing left to do, so that the count
is final rather than "no duplicate so far".
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import pydicom

from tests.e2e.conftest import metric_value, wait_for
from tests.peers.orthanc import Orthanc, Received
from tests.peers.router import RouterProcess
from tests.peers.srcontent import evidence_uids

__all__ = ["assert_delivered_once", "evidence_uids", "sop_uids", "sr_requests", "stop_when_idle", "stored_srs"]

ROUTER_AET = "PACSFLOW"


def sr_requests(pacs: Orthanc, study_uid: str) -> list[Received]:
    """C-STORE requests of SRs of one study the PACS received from the router (duplicates included)."""
    return [r for r in pacs.received(modality="SR", study_uid=study_uid) if r.remote_aet == ROUTER_AET]


def stored_srs(pacs: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    """The SRs of one study the PACS keeps, read back from its REST API."""
    return [pydicom.dcmread(BytesIO(pacs.instance_file(i)))
            for i in pacs.instances(modality="SR", study_uid=study_uid)]


def sop_uids(paths: Sequence[str | Path]) -> set[str]:
    """SOP Instance UIDs of the files that were sent."""
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}


def stop_when_idle(router: RouterProcess, timeout: float = 120) -> None:
    """Wait until the router has no study queued or in progress and an empty outbox, then stop it.

    After this nothing more can leave the router, so a delivery count taken afterwards is final: a duplicate that
    was queued shows as a second request (it was sent) or the outbox was not empty (the wait fails).
    """
    wait_for(lambda: metric_value(router, "pacsflow_outbox_pending") == 0
             and metric_value(router, "pacsflow_queue_depth_studies") == 0
             and metric_value(router, "pacsflow_studies_in_progress") == 0,
             timeout, "the router to finish every study and empty its outbox", router)
    router.stop()


def assert_delivered_once(pacs: Orthanc, study_uid: str, srs: int = 1) -> list[Received]:
    """Exactly ``srs`` SRs of the study reached the PACS, each in exactly one C-STORE request."""
    requests = sr_requests(pacs, study_uid)
    per_uid: dict[str, int] = {}
    for request in requests:
        per_uid[request.sop_instance_uid] = per_uid.get(request.sop_instance_uid, 0) + 1
    assert sorted(per_uid.values()) == [1] * srs, (
        f"expected {srs} SR(s) sent once each; C-STORE requests per SR: {sorted(per_uid.values())}")
    assert len(pacs.instances(modality="SR", study_uid=study_uid)) == srs
    return requests
