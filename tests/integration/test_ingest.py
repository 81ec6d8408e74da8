"""Ingest against real peers: dcmtk storescu/echoscu -> DicomReceiver -> durable spool.

Covers issue 2 section 3: C-ECHO, stores in several transfer syntaxes kept as received, calling AE rejection, the
0xA700 watermark, 0xC000 for unparseable data, TCP_NODELAY on accepted sockets, hostile input (huge declared PDUs,
random bytes, truncated PDUs, idle connections) and kill -9 during ingest.
"""

from __future__ import annotations

import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification

from pacsflow_router import metrics
from pacsflow_router.config import parse_config
from pacsflow_router.ingest.scp import MAX_PDU_LENGTH, DicomReceiver
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.ingest.studies import StudyTracker
from pacsflow_router.models import phantom
from tests.peers.dcmtk import dcmtk_env, echoscu, storescu
from tests.peers.gate import storescu_killed_mid_stream
from tests.peers.spool_check import assert_spool_holds_exactly, sop_uids

# dcmtk is required, not optional: make system-deps installs it and a missing storescu fails the tests.

HOST = "127.0.0.1"


def config(spool_dir: Path, allowed: list[str] | None = None):
    return parse_config({
        "aeTitle": "PACSFLOW",
        "allowedCallingAETitles": ["STORESCU"] if allowed is None else allowed,
        "spoolDir": str(spool_dir),
    })


@pytest.fixture
def receiver(tmp_path):
    """An in-process DicomReceiver on a free port with short timeouts, and its spool."""
    spool = Spool(tmp_path / "spool", 0.999)
    rx = DicomReceiver(config(tmp_path / "spool"), spool, port=0, acse_timeout=2, network_timeout=3)
    rx.start()
    yield rx, spool
    rx.stop()
    spool.close()


def dataset_bytes(path: Path | bytes) -> bytes:
    """The encoded data set after the File Meta Information (what travelled in the C-STORE)."""
    data = path if isinstance(path, bytes) else Path(path).read_bytes()
    assert data[128:132] == b"DICM"
    (group_length,) = struct.unpack("<I", data[140:144])  # (0002,0000) UL, explicit VR little endian
    return data[144 + group_length:]


def sample(name: str, **labels: str) -> float:
    """Current value of a router metric (0 when never touched)."""
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def write_study(out_dir: Path, seed: int, slices: int, ts: str = ExplicitVRLittleEndian, size: int = 64):
    paths, _ = phantom.write_study(out_dir, seed, lesion=False, slices=slices, rows=size, cols=size,
                                   transfer_syntax_uid=ts)
    return paths


# -- C-ECHO, C-STORE ------------------------------------------------------------------------------------------


def test_echo(receiver):
    rx, _ = receiver
    result = echoscu(rx.port)
    assert result.returncode == 0, result.stderr


def _jpeg_lossless_copies(paths: list[Path], out_dir: Path) -> list[Path]:
    out_dir.mkdir()
    converted = []
    for p in paths:
        dst = out_dir / p.name
        subprocess.run(["dcmcjpeg", str(p), str(dst)], check=True, env=dcmtk_env())
        converted.append(dst)
    return converted


# storescu option that proposes each transfer syntax (together with the uncompressed ones, in one context).
STORESCU_PROPOSE = {
    ExplicitVRLittleEndian: "-x=", ImplicitVRLittleEndian: "-xi", RLELossless: "-xr", JPEGLSLossless: "-xt",
    JPEG2000Lossless: "-xv", JPEGLosslessSV1: "-xs",
}


@pytest.mark.parametrize("ts", list(STORESCU_PROPOSE))
def test_store_keeps_transfer_syntax_and_bytes(receiver, tmp_path, ts):
    rx, spool = receiver
    if ts == JPEGLosslessSV1:  # pydicom cannot encode lossless JPEG: dcmtk's dcmcjpeg makes the files
        paths = _jpeg_lossless_copies(write_study(tmp_path / "src", 21, 2), tmp_path / "jpeg")
    else:
        paths = write_study(tmp_path / "src", 21, 2, ts)
    received, received_bytes = sample("pacsflow_instances_received_total"), sample("pacsflow_received_bytes_total")
    result = storescu(rx.port, paths, extra=[STORESCU_PROPOSE[ts]])
    assert result.returncode == 0 and len(result.acknowledged) == 2, result.output
    for p in paths:
        sent = pydicom.dcmread(p, stop_before_pixels=True)
        (stored,) = [i for i in spool.instances(sent.StudyInstanceUID) if i.sop_instance_uid == sent.SOPInstanceUID]
        on_disk = stored.path.read_bytes()
        assert pydicom.dcmread(stored.path).file_meta.TransferSyntaxUID == ts
        assert dataset_bytes(on_disk) == dataset_bytes(p)  # never re-encoded
    assert sample("pacsflow_instances_received_total") == received + 2
    assert sample("pacsflow_received_bytes_total") == received_bytes + sum(
        i.size for i in spool.instances(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID))


def test_unknown_calling_ae_is_rejected_with_reason(receiver):
    rx, spool = receiver
    rejected = sample("pacsflow_associations_total", outcome="rejected")
    result = echoscu(rx.port, calling="INTRUDER")
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stdout + result.stderr
    assert spool.count() == 0
    assert sample("pacsflow_associations_total", outcome="rejected") == rejected + 1


def test_empty_allow_list_rejects_everybody(tmp_path):
    spool = Spool(tmp_path / "spool", 0.999)
    rx = DicomReceiver(config(tmp_path / "spool", allowed=[]), spool, port=0)
    rx.start()
    try:
        result = echoscu(rx.port)
        assert result.returncode != 0 and "Calling AE Title Not Recognized" in result.stdout + result.stderr
        rx.update_config(config(tmp_path / "spool", allowed=["STORESCU"]))
        assert echoscu(rx.port).returncode == 0  # hot reload of the allow-list
    finally:
        rx.stop()


def test_spool_above_watermark_answers_out_of_resources(tmp_path):
    spool = Spool(tmp_path / "spool", 1e-9)
    rx = DicomReceiver(config(tmp_path / "spool"), spool, port=0)
    rx.start()
    full = sample("pacsflow_instances_rejected_total", reason="spool-full")
    try:
        result = storescu(rx.port, write_study(tmp_path / "src", 22, 2))
    finally:
        rx.stop()
    assert "Refused: OutOfResources" in result.responses.values(), result.output
    assert result.acknowledged == []
    assert spool.count() == 0 and not list((tmp_path / "spool" / "instances").iterdir())
    assert sample("pacsflow_instances_rejected_total", reason="spool-full") == full + 1


def _send_with_pynetdicom(port: int, path: Path) -> int:
    """C-STORE one file as it is on disk (meta parsed, data set streamed raw) and return the status."""
    from pynetdicom import _config

    ae = AE("STORESCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(HOST, port, ae_title="PACSFLOW")
    assert assoc.is_established
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the bytes after the file meta without parsing them
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
        assoc.release()
    return status.Status


def test_unparseable_data_is_refused_and_nothing_stored(receiver, tmp_path):
    rx, spool = receiver
    (good,) = write_study(tmp_path / "src", 23, 1)
    data = good.read_bytes()
    meta_end = len(data) - len(dataset_bytes(data))
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(data[:meta_end] + random.Random(5).randbytes(4000))
    assert _send_with_pynetdicom(rx.port, garbage) & 0xF000 == 0xC000

    # Parseable but unindexable (no Study Instance UID) is refused the same way, from storescu.
    ds = pydicom.dcmread(good)
    del ds.StudyInstanceUID
    no_study = tmp_path / "no_study.dcm"
    ds.save_as(no_study, enforce_file_format=True)
    result = storescu(rx.port, [no_study])
    assert result.acknowledged == [] and any("Error" in r or "C0" in r for r in result.responses.values()), \
        result.output
    assert spool.count() == 0 and not list((tmp_path / "spool" / "instances").iterdir())


def test_tcp_nodelay_is_set_on_accepted_sockets(receiver):
    rx, _ = receiver
    seen: list[int] = []
    rx.server.bind(evt.EVT_CONN_OPEN, lambda event: seen.append(
        event.assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
    assert echoscu(rx.port).returncode == 0
    assert seen and all(v != 0 for v in seen)


# -- hostile input, against a receiver in its own process so its memory can be measured --------------------------

RUNNER = """
import sys
from pacsflow_router.config import parse_config
from pacsflow_router.ingest.scp import DicomReceiver
from pacsflow_router.ingest.spool import Spool
spool_dir = sys.argv[1]
cfg = parse_config({"aeTitle": "PACSFLOW", "allowedCallingAETitles": ["STORESCU"], "spoolDir": spool_dir})
rx = DicomReceiver(cfg, Spool(spool_dir, 0.999), port=0, acse_timeout=2, network_timeout=3)
rx.start()
print(rx.port, flush=True)
sys.stdin.read()  # serve until the test closes stdin
rx.stop()
"""


class ReceiverProcess:
    """``DicomReceiver`` in a child Python process (so it can be measured with psutil and killed with -9)."""

    def __init__(self, spool_dir: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(spool_dir)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()


@pytest.fixture
def receiver_process(tmp_path):
    rp = ReceiverProcess(tmp_path / "spool")
    yield rp
    rp.stop()


def _closed_by_peer(sock: socket.socket, within: float) -> bytes | None:
    """Read until the server closes; return what it sent (None if still open after ``within`` seconds)."""
    sock.settimeout(within)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


def _flood(sock: socket.socket, header: bytes, total: int) -> int:
    """Send ``header`` then up to ``total`` bytes of body, stopping when the server hangs up; return bytes sent."""
    chunk = b"\0" * (1 << 20)
    sent = 0
    try:
        sock.sendall(header)
        for _ in range(total // len(chunk)):
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:  # reset, broken pipe, timeout: the server stopped reading
        pass
    return sent


class PeakRss:
    """Samples a process's RSS in a background thread; ``growth`` is the peak minus the value at start."""

    def __init__(self, rp: ReceiverProcess) -> None:
        self.rp = rp
        self.start = rp.rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.rp.rss())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rp.rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def test_huge_declared_associate_rq_is_refused_without_buffering(receiver_process):
    rp = receiver_process
    assert echoscu(rp.port).returncode == 0
    with PeakRss(rp) as rss, socket.create_connection((HOST, rp.port)) as sock:
        sock.settimeout(10)
        # A-ASSOCIATE-RQ declaring 400 MB, then as much of its body as the server is willing to take (<= 128 MB).
        sent = _flood(sock, struct.pack(">BBL", 0x01, 0, 400_000_000), 128 << 20)
        reply = _closed_by_peer(sock, within=10)
    assert sent < 64 << 20, f"server read {sent >> 20} MB of a 400 MB A-ASSOCIATE-RQ"
    assert reply is not None, "server kept the connection open"
    assert reply in (b"", bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6]))  # nothing, or A-ABORT (invalid PDU parameter)
    assert rss.growth < 50 << 20
    assert echoscu(rp.port).returncode == 0
    assert rp.proc.poll() is None


def test_p_data_above_negotiated_maximum_is_refused(receiver_process):
    rp = receiver_process
    ae = AE("STORESCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate(HOST, rp.port, ae_title="PACSFLOW")
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == MAX_PDU_LENGTH
    raw = assoc.dul.socket.socket
    raw.settimeout(10)
    with PeakRss(rp) as rss:
        sent = _flood(raw, struct.pack(">BBL", 0x04, 0, 400_000_000), 128 << 20)
        deadline = time.monotonic() + 10
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
    assert sent < 64 << 20, f"server read {sent >> 20} MB of a P-DATA-TF PDU above the negotiated maximum"
    assert assoc.is_aborted, "association survived a P-DATA-TF PDU longer than the maximum we advertised"
    assert rss.growth < 50 << 20
    assert echoscu(rp.port).returncode == 0


@pytest.mark.parametrize("excess", [0, 1])
def test_p_data_limit_is_the_advertised_maximum_length(tmp_path, excess):
    """A well-formed P-DATA-TF of exactly the maximum is read; one byte more is aborted (PS3.8 D.1)."""
    spool = Spool(tmp_path / "spool", 0.999)
    # A long network timeout, so only the length guard (not an idle timer) can end the association here.
    rx = DicomReceiver(config(tmp_path / "spool"), spool, port=0, network_timeout=120, dimse_timeout=120)
    rx.start()
    try:
        ae = AE("STORESCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate(HOST, rx.port, ae_title="PACSFLOW")
        assert assoc.is_established
        length = MAX_PDU_LENGTH + excess
        context_id = assoc.accepted_contexts[0].context_id
        # One PDV: a command fragment that is not the last one, so a receiver that reads it waits for more.
        pdv = struct.pack(">LBB", length - 4, context_id, 0x01) + b"\0" * (length - 10)
        assoc.dul.socket.socket.sendall(struct.pack(">BBL", 0x04, 0, length) + pdv)
        deadline = time.monotonic() + (10 if excess else 2)  # the accepted one must merely stay up a while
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert assoc.is_aborted == bool(excess)
        if not excess:
            assoc.abort()
    finally:
        rx.stop()


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_bytes_do_not_hurt(receiver_process, seed):
    rp = receiver_process
    with socket.create_connection((HOST, rp.port)) as sock:
        try:
            sock.sendall(random.Random(seed).randbytes(64 * 1024))
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert _closed_by_peer(sock, within=15) is not None
    assert echoscu(rp.port).returncode == 0
    assert rp.proc.poll() is None


def test_truncated_pdu_and_idle_connections_do_not_block_others(receiver_process):
    rp = receiver_process
    idle = socket.create_connection((HOST, rp.port))
    stalled = socket.create_connection((HOST, rp.port))
    # Header of an A-ASSOCIATE-RQ declaring 200 bytes, then only 50 of them: the reader is left mid-PDU.
    stalled.sendall(struct.pack(">BBL", 0x01, 0, 200) + b"\x00\x01" + b"\x00" * 48)
    truncated_then_closed = socket.create_connection((HOST, rp.port))
    truncated_then_closed.sendall(struct.pack(">BBL", 0x04, 0, 1000) + b"\x00" * 10)
    truncated_then_closed.close()
    try:
        assert echoscu(rp.port).returncode == 0  # others are served while those connections hang
        # Idle peers are dropped by the ACSE timer (2 s here), stalled ones by the network timeout (3 s here).
        assert _closed_by_peer(idle, within=15) is not None
        assert _closed_by_peer(stalled, within=15) is not None
    finally:
        idle.close()
        stalled.close()
    assert echoscu(rp.port).returncode == 0
    assert rp.proc.poll() is None


# -- kill -9 ----------------------------------------------------------------------------------------------------


def test_kill_9_during_ingest_loses_no_acknowledged_instance(tmp_path):
    spool_dir = tmp_path / "spool"
    paths = write_study(tmp_path / "src", 31, 150)
    rp = ReceiverProcess(spool_dir)
    # Killed mid-stream: storescu is waiting for the answer to instance 21.
    result = storescu_killed_mid_stream(rp.port, paths, let_through=20, kill=rp.kill9, log=tmp_path / "storescu.log")
    acknowledged = sop_uids(result.acknowledged)
    assert len(acknowledged) == 20, result.output[-2000:]
    assert result.returncode != 0, "storescu must see the association die"

    # Restart on the same spool: everything acknowledged is indexed, on disk, and its study is due again.
    spool = Spool(spool_dir, 0.999)
    study_uid = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    indexed = assert_spool_holds_exactly(spool, study_uid, acknowledged)
    (due,) = StudyTracker(spool).due(time.time() + 3600, 0)
    assert due.study_uid == study_uid and len(due.paths) == len(indexed)
    spool.close()

    # The sender retries everything: duplicates are kept once and the study is complete.
    rp2 = ReceiverProcess(spool_dir)
    try:
        again = storescu(rp2.port, paths)
        assert len(again.acknowledged) == len(paths), again.output
    finally:
        rp2.stop()
    spool = Spool(spool_dir, 0.999)
    assert len(spool.instances(study_uid)) == len(paths)
    assert len(list((spool_dir / "instances").iterdir())) == len(paths)
    spool.close()


def test_concurrent_associations(receiver, tmp_path):
    rx, spool = receiver
    studies = [write_study(tmp_path / f"s{i}", 40 + i, 6) for i in range(3)]
    results: list = [None] * 3

    def send(i: int) -> None:
        results[i] = storescu(rx.port, studies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(len(r.acknowledged) == 6 for r in results), [r.output for r in results]
    assert spool.count() == 18
