"""Ingest throughput and memory: router durable spool vs dcmtk ``storescp`` vs Orthanc, same data, same machine.

``python -m bench ingest`` (or ``python -m bench.ingest``):

1. N (default 300) 512x512 int16 CT instances (512 KB each, from :mod:`pacsflow_router.models.phantom`) sent by dcmtk
   ``storescu`` over ONE association to (a) the router's :class:`~pacsflow_router.ingest.scp.DicomReceiver` writing the
   durable spool (fsync per instance + SQLite WAL commit), (b) dcmtk ``storescp`` writing files (no fsync),
   (c) Orthanc (SQLite index, ``SyncStorageArea`` on). Instances/s, MB/s and the router's ratio to each peer.
2. Router RSS while one association delivers a 2,000-instance study (64x64, small on purpose): RSS at 25/50/75/100 %
   and the peak. It must stay flat (nothing per instance is kept in memory).

Each receiver runs in its own process; every dcmtk/Orthanc process gets ``TCP_NODELAY=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
from pydicom.uid import generate_uid

from pacsflow_router.models import phantom
from tests.peers.dcmtk import StoreSCP, dcmtk_env, storescu_command, wait_for_port

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def make_instances(out_dir: Path, count: int, size: int, seed: int = 2026, distinct_slices: int = 16) -> list[Path]:
    """``count`` CT instances of ``size`` x ``size`` int16, each with its own SOP Instance UID.

    Rendering every slice of a phantom is slow, so ``distinct_slices`` are rendered and re-used under new UIDs.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    datasets, _ = phantom.generate_study(seed, lesion=False, slices=distinct_slices, rows=size, cols=size)
    paths = []
    for i in range(count):
        ds = datasets[i % distinct_slices]
        uid = generate_uid(entropy_srcs=[f"pacsflow-bench-{seed}-{size}-{i}"])
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = i + 1
        path = out_dir / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# -- receivers ---------------------------------------------------------------------------------------------------


class RouterProcess:
    """The router's DicomReceiver + Spool in a child process (``--serve``), stopped by closing its stdin."""

    def __init__(self, spool_dir: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.ingest", "--serve", str(spool_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self.ae_title = "PACSFLOW"

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def __enter__(self) -> RouterProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _serve(spool_dir: str) -> None:
    from pacsflow_router.config import parse_config
    from pacsflow_router.ingest.scp import DicomReceiver
    from pacsflow_router.ingest.spool import Spool

    config = parse_config({"aeTitle": "PACSFLOW", "allowedCallingAETitles": ["STORESCU"], "spoolDir": spool_dir})
    receiver = DicomReceiver(config, Spool(spool_dir, 0.99), port=0)
    receiver.start()
    print(receiver.port, flush=True)
    sys.stdin.read()
    receiver.stop()


class OrthancProcess:
    """Orthanc from a temporary config: storage in ``workdir``, free loopback ports, no remote access."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = _free_port()
        self.http_port = _free_port()
        self.ae_title = "ORTHANC"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> OrthancProcess:
        storage = self.workdir / "storage"
        storage.mkdir(parents=True)
        config = self.workdir / "config.json"
        config.write_text(json.dumps({
            "Name": "pacsflow-bench", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "DicomAet": self.ae_title, "DicomPort": self.port, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True,
        }))
        self._log = open(self.workdir / "orthanc.log", "wb")  # closed in __exit__
        self.proc = subprocess.Popen(["Orthanc", str(config)], env=dcmtk_env(), stdout=self._log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/system", timeout=2):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start; see {self.workdir / 'orthanc.log'}") from None
                time.sleep(0.1)
        wait_for_port(self.port)
        return self

    def __exit__(self, *exc) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# -- measurements ------------------------------------------------------------------------------------------------


def send(port: int, called: str, files: list[Path], progress: dict[int, Callable[[], object]] | None = None) -> float:
    """storescu ``files`` over one association; seconds from first byte to release. Calls ``progress[k]()``
    when the k-th Success response arrives."""
    cmd = storescu_command(port, files, called=called)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dcmtk_env())
    ok = 0
    tail: list[str] = []
    for line in proc.stdout:
        if "Received Store Response (Success)" in line:
            ok += 1
            if progress and ok in progress:
                progress[ok]()
        elif line.startswith(("E:", "F:")):
            tail.append(line.rstrip())
    proc.wait()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0 or ok != len(files):
        raise RuntimeError(f"storescu to {called} stored {ok}/{len(files)}: {' | '.join(tail[-3:])}")
    return elapsed


def throughput(files: list[Path], work: Path) -> list[tuple[str, float]]:
    """Seconds to receive ``files`` for each receiver."""
    results = []
    with RouterProcess(work / "router-spool") as router:
        results.append(("router (fsync'ed spool + SQLite)", send(router.port, router.ae_title, files)))
    port = _free_port()
    with StoreSCP(work / "storescp", port):
        results.append(("dcmtk storescp (files, no fsync)", send(port, "STORESCP", files)))
    with OrthancProcess(work / "orthanc") as orthanc:
        results.append(("Orthanc 1.x (SQLite index)", send(orthanc.port, orthanc.ae_title, files)))
    return results


def rss_profile(files: list[Path], work: Path) -> tuple[dict[int, int], int, int]:
    """Router RSS (bytes) at 25/50/75/100 % of one association delivering ``files``, its peak and start."""
    marks: dict[int, int] = {}
    with RouterProcess(work / "rss-spool") as router:
        start = router.rss()
        peak = [start]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                peak[0] = max(peak[0], router.rss())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        n = len(files)
        progress = {max(1, n * pct // 100): (lambda pct=pct: marks.__setitem__(pct, router.rss()))
                    for pct in (25, 50, 75, 100)}
        send(router.port, router.ae_title, files, progress)
        done.set()
        sampler.join()
        peak[0] = max(peak[0], router.rss())
    return marks, peak[0], start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=300, help="512 KB instances per receiver")
    parser.add_argument("--rss-instances", type=int, default=2000, help="instances of the RSS study")
    parser.add_argument("--serve", metavar="SPOOL_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args([] if argv is None else argv)
    if args.serve:
        _serve(args.serve)
        return 0

    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-ingest-") as tmp:
        work = Path(tmp)
        files = make_instances(work / "ct512", args.instances, 512)
        mb = sum(os.path.getsize(f) for f in files) / 1e6
        results = throughput(files, work)
        small = make_instances(work / "ct64", args.rss_instances, 64)
        marks, peak, start = rss_profile(small, work)

    router_rate = args.instances / results[0][1]
    print(f"\nIngest: {args.instances} CT instances of {mb / args.instances:.2f} MB over one association "
          "(storescu, TCP_NODELAY=1)")
    print(f"{'receiver':36} {'seconds':>8} {'inst/s':>8} {'MB/s':>8} {'router/this':>12}")
    for name, seconds in results:
        rate = args.instances / seconds
        print(f"{name:36} {seconds:8.2f} {rate:8.1f} {mb / seconds:8.1f} {router_rate / rate:12.2f}")
    print(f"\nRouter RSS while receiving a {args.rss_instances}-instance study (64x64) over one association")
    print(f"{'progress':36} {'RSS MB':>8}")
    print(f"{'start':36} {start / 2**20:8.1f}")
    for pct in sorted(marks):
        print(f"{str(pct) + ' %':36} {marks[pct] / 2**20:8.1f}")
    print(f"{'peak':36} {peak / 2**20:8.1f}")
    print(f"{'growth 25 % -> 100 %':36} {(marks[100] - marks[25]) / 2**20:8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
