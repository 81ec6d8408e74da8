"""ingest.reactor with real storescu peers: every association of the receiver is event-driven, stores and releases
normally, and leaves nothing behind (wake-up pipes closed, association threads ended); a stop aborts a live one."""

from __future__ import annotations

import gc
import os
import stat
import subprocess
import threading

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from pacsflow_router.config import parse_config
from pacsflow_router.ingest.reactor import EventDrivenSocket
from pacsflow_router.ingest.scp import DicomReceiver
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.models import phantom
from tests.peers.dcmtk import storescu
from tests.peers.net import eventually

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "storescu"], capture_output=True, check=False).returncode != 0,
    reason="dcmtk is not installed (make system-deps)",
)


def _pipes() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += stat.S_ISFIFO(os.stat(f"/proc/self/fd/{fd}").st_mode)
        except OSError:
            pass  # the listing's own descriptor, closed already
    return count


def _association_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("AcceptorThread") or "run_reactor" in t.name]


@pytest.fixture
def receiver(tmp_path):
    spool = Spool(tmp_path / "spool", 0.999)
    config = parse_config({"aeTitle": "PACSFLOW", "allowedCallingAETitles": ["STORESCU"],
                           "spoolDir": str(tmp_path / "spool")})
    rx = DicomReceiver(config, spool, port=0, acse_timeout=2, network_timeout=3)
    rx.start()
    yield rx, spool
    rx.stop()
    spool.close()


def test_many_associations_store_release_and_leave_nothing_behind(receiver, tmp_path):
    rx, spool = receiver
    paths, _ = phantom.write_study(tmp_path / "src", 5, lesion=False, slices=12, rows=16, cols=16)
    pipes_before = _pipes()
    for i in range(6):
        result = storescu(rx.port, paths[2 * i:2 * i + 2])
        assert result.returncode == 0 and len(result.acknowledged) == 2, result.output
    assert spool.count() == 12

    def settled() -> bool:
        gc.collect()
        return not _association_threads() and _pipes() <= pipes_before

    eventually(settled, "association threads ended and their wake-up pipes closed", timeout=15,
               context=lambda: f"threads {_association_threads()}, pipes {_pipes()} (before: {pipes_before})")


def test_a_live_association_is_event_driven_and_stop_aborts_it(receiver, tmp_path):
    rx, spool = receiver
    (path,), _ = phantom.write_study(tmp_path / "src", 6, lesion=False, slices=1, rows=16, cols=16)
    requestor = AE("STORESCU")
    requestor.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = requestor.associate("127.0.0.1", rx.port, ae_title="PACSFLOW")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
        (live,) = rx._ae.active_associations
        assert isinstance(live.dul.socket, EventDrivenSocket) and live.dul._run_loop_delay == 0
        # Idle now: the receiver's reactors wait on events; stop() must still get through to them.
        rx.stop()
        eventually(lambda: assoc.is_aborted, "the receiver's stop aborted the idle association", timeout=15)
        eventually(lambda: not _association_threads(), "the receiver's association threads ended", timeout=15)
    finally:
        if assoc.is_established:
            assoc.abort()
    assert spool.count() == 1
