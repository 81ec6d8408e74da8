"""Write-ahead ingest against real peers: dcmtk storescu -> DicomReceiver (write-ahead spool, live checkpointer),
kill -9 mid-stream, restart: every acknowledged instance indexed once, a resend adds nothing twice."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pydicom

from pacsflow_router.ingest.spool import Spool
from pacsflow_router.models import phantom
from tests.peers.dcmtk import storescu
from tests.peers.gate import storescu_killed_mid_stream
from tests.peers.spool_check import assert_spool_holds_exactly, sop_uids

RUNNER = """
import sys
from pacsflow_router.config import parse_config
from pacsflow_router.ingest.scp import DicomReceiver
from pacsflow_router.ingest.spool import Spool
spool_dir = sys.argv[1]
cfg = parse_config({"aeTitle": "PACSFLOW", "allowedCallingAETitles": ["STORESCU"], "spoolDir": spool_dir})
rx = DicomReceiver(cfg, Spool(spool_dir, 0.999, write_ahead=True), port=0, acse_timeout=2, network_timeout=3)
rx.start()
print(rx.port, flush=True)
sys.stdin.read()
rx.stop()
rx.spool.close()
"""


class _Receiver:
    def __init__(self, spool_dir: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(spool_dir)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def _study(out_dir: Path, slices: int) -> list[Path]:
    return phantom.write_study(out_dir, 61, lesion=False, slices=slices, rows=128, cols=128)[0]


def test_kill_9_with_live_checkpointer_loses_nothing_acknowledged(tmp_path):
    spool_dir = tmp_path / "spool"
    paths = _study(tmp_path / "src", 120)
    rx = _Receiver(spool_dir)
    try:
        result = storescu_killed_mid_stream(rx.port, paths, let_through=90, kill=rx.kill9,
                                            log=tmp_path / "storescu.log")
    finally:
        rx.stop()
    acknowledged = sop_uids(result.acknowledged)
    assert len(acknowledged) == 90, result.output[-2000:]
    assert list((spool_dir / "wal").glob("segment-*.wal")), "the receiver must have used write-ahead segments"

    spool = Spool(spool_dir, 0.999, write_ahead=True)
    study_uid = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    assert_spool_holds_exactly(spool, study_uid, acknowledged)
    spool.close()

    rx2 = _Receiver(spool_dir)
    try:
        again = storescu(rx2.port, paths)
        assert len(again.acknowledged) == len(paths), again.output
    finally:
        rx2.stop()
    spool = Spool(spool_dir, 0.999, write_ahead=True)
    assert spool.wal is not None and spool.wal.replayed == 0, "a clean stop indexes everything"
    assert len(spool.instances(study_uid)) == len(paths)
    assert len(list((spool_dir / "instances").iterdir())) == len(paths)
    spool.close()
