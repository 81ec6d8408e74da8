"""What a sender had acknowledged, and whether a spool holds exactly that (crash tests of the ingest path)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pydicom

from pacsflow_router.ingest.spool import Spool, StoredInstance


def sop_uids(paths: Iterable[str | Path]) -> set[str]:
    """SOP Instance UIDs of the files (e.g. those storescu saw acknowledged)."""
    return {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}


def assert_spool_holds_exactly(spool: Spool, study_uid: str, acknowledged: set[str]) -> dict[str, StoredInstance]:
    """The spool indexes exactly the acknowledged instances of the study, each file the instance it is indexed as."""
    indexed = {i.sop_instance_uid: i for i in spool.instances(study_uid)}
    assert set(indexed) == acknowledged, "the spool holds exactly what was acknowledged"
    for uid in acknowledged:
        assert pydicom.dcmread(indexed[uid].path, stop_before_pixels=True).SOPInstanceUID == uid
    return indexed
