"""Ingest throughput and memory: router durable spool vs dcmtk ``storescp`` vs Orthanc, same data, same machine.

``python -m bench ingest`` (or ``python -m bench.ingest``):

1. N (default 300) 512x512 int16 CT instances (512 KB each, from :mod:`pacsflow_router.models.phantom`) sent by dcmtk
   ``storescu`` over ONE association, then split over 4 concurrent associations (4 ``storescu`` at once), to (a) the
   router's :class:`~pacsflow_router.ingest.scp.DicomReceiver` writing the durable spool (fdatasync per instance and
   its directory entry, before Success), (b) dcmtk ``storescp`` writing files (no fsync; ``--fork`` for the
   concurrent run), (c) Orthanc with ``SyncStorageArea`` pinned on (it fsyncs every instance before Success, so it
   makes the router's promise). Instances/s, MB/s and the router's ratio to each peer, per round (``--rounds``:
   the machine may be shared; the spread between rounds says how far to trust one).
   (d) for reference, the same receiver with a spool that keeps nothing (``--serve-keep-nothing``): the ceiling of
   the receive path itself (pynetdicom, index read, response) with storage free, so the storage's share and the
   network stack's share of the gap to storescp can both be read off the same run.
2. Router RSS while one association delivers a 2,000-instance study (64x64, small on purpose): RSS at 25/50/75/100 %
   and the peak. It must stay flat (nothing per instance is kept in memory).

Each receiver runs in its own process; every dcmtk/Orthanc process gets ``TCP_NODELAY=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

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

    def __init__(self, spool_dir: Path, module: str = "bench.ingest", serve_args: tuple[str, ...] = (),
                 serve: str = "--serve") -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", module, serve, str(spool_dir), *serve_args],
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


class KeepNothing:
    """Bench only: stands in for the spool and keeps nothing, so the receiver answers Success at once.

    Measures the ceiling of the receive path without storage (never used by the router itself)."""

    def store_received(self, parts: tuple[bytes | memoryview, ...], attributes: tuple[str, str, str, str]) -> object:
        from pacsflow_router.ingest.spool import StoredInstance

        study, series, sop, modality = attributes
        return StoredInstance(sop, study, series, modality, Path(os.devnull), sum(len(p) for p in parts), time.time())


def serve_receiver(spool_dir: str, keep_nothing: bool = False, **config: object) -> None:
    """Child process: the router's DICOM receiver on a free port (``config`` adds routing-config keys, e.g.
    ``tls``); prints its port, stops when stdin closes. ``keep_nothing``: :class:`KeepNothing` for the spool."""
    from pacsflow_router.config import parse_config
    from pacsflow_router.ingest.scp import DicomReceiver
    from pacsflow_router.ingest.spool import Spool

    routing = parse_config({"aeTitle": "PACSFLOW", "allowedCallingAETitles": ["STORESCU"], "spoolDir": spool_dir,
                            **config})
    # The router's default spool (a file per instance); PACSFLOW_BENCH_WRITE_AHEAD=1: spoolWriteAhead (ingest/wal.py).
    spool = None if keep_nothing else Spool(spool_dir, 0.99,
                                            write_ahead=os.environ.get("PACSFLOW_BENCH_WRITE_AHEAD") == "1")
    receiver = DicomReceiver(routing, cast(Spool, KeepNothing()) if spool is None else spool, port=0)
    receiver.start()
    print(receiver.port, flush=True)
    sys.stdin.read()
    receiver.stop()
    if spool is None:
        return
    if spool.wal is not None and os.environ.get("PACSFLOW_BENCH_WAL_STATS") == "1":
        print(f"write-ahead: {spool.wal.appended} appended, {spool.wal.fallbacks} stored directly", file=sys.stderr)
    spool.close()


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
            # Pinned, not left to the default of the installed version: Success only once the file is fsync'ed.
            "SyncStorageArea": True,
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


def send_concurrently(port: int, called: str, files: list[Path], associations: int) -> float:
    """``files`` split over ``associations`` storescu processes started together; seconds until the last is done."""
    shares = [files[i::associations] for i in range(associations)]
    with ThreadPoolExecutor(associations) as pool:
        started = time.perf_counter()
        for future in [pool.submit(send, port, called, share) for share in shares]:
            future.result()  # raises what a sender raised
        return time.perf_counter() - started


ROUTER = "router (durable spool)"
STORESCP = "dcmtk storescp (no fsync)"
ORTHANC = "Orthanc (SyncStorageArea on)"
CEILING = "router, nothing kept (ceiling)"


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()  # children: storescp --fork's association processes, once reaped
    return float(times.user + times.system + times.children_user + times.children_system)


def throughput(files: list[Path], work: Path, associations: int) -> dict[str, tuple[float, float]]:
    """(seconds, receiver CPU seconds) to receive ``files`` for each receiver, over ``associations`` associations.

    CPU time depends far less on what else the machine runs than wall time does: on a shared machine it says
    more about the cost per instance.
    """
    def deliver(pid: int, port: int, called: str) -> tuple[float, float]:
        proc = psutil.Process(pid)
        cpu = _cpu_seconds(proc)
        if associations == 1:
            seconds = send(port, called, files)
        else:
            seconds = send_concurrently(port, called, files, associations)
        return seconds, _cpu_seconds(proc) - cpu

    results = {}
    with RouterProcess(work / "router-spool") as router:
        results[ROUTER] = deliver(router.proc.pid, router.port, router.ae_title)
    port = _free_port()
    with StoreSCP(work / "storescp", port, fork=associations > 1) as storescp:
        assert storescp.proc is not None
        results[STORESCP] = deliver(storescp.proc.pid, port, "STORESCP")
    with OrthancProcess(work / "orthanc") as orthanc:
        assert orthanc.proc is not None
        results[ORTHANC] = deliver(orthanc.proc.pid, orthanc.port, orthanc.ae_title)
    with RouterProcess(work / "ceiling-spool", serve="--serve-keep-nothing") as ceiling:
        results[CEILING] = deliver(ceiling.proc.pid, ceiling.port, ceiling.ae_title)
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
    parser.add_argument("--associations", type=int, default=4, help="concurrent associations of the second run")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the throughput runs (spread on a busy machine)")
    parser.add_argument("--serve", metavar="SPOOL_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--serve-keep-nothing", metavar="SPOOL_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args([] if argv is None else argv)
    if args.serve or args.serve_keep_nothing:
        serve_receiver(args.serve or args.serve_keep_nothing, keep_nothing=bool(args.serve_keep_nothing))
        return 0

    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-ingest-") as tmp:
        work = Path(tmp)
        files = make_instances(work / "ct512", args.instances, 512)
        mb = sum(os.path.getsize(f) for f in files) / 1e6
        runs = []
        for round_ in range(args.rounds):
            for associations in (1, args.associations):
                runs.append((round_ + 1, associations, throughput(files, work / f"r{round_}-a{associations}",
                                                                  associations)))
        small = make_instances(work / "ct64", args.rss_instances, 64)
        marks, peak, start = rss_profile(small, work)

    print(f"\nIngest: {args.instances} CT instances of {mb / args.instances:.2f} MB (storescu, TCP_NODELAY=1); "
          "router/this > 1 means the router is faster")
    print(f"{'round':>5} {'assocs':>6}  {'receiver':30} {'seconds':>8} {'inst/s':>8} {'MB/s':>8} {'router/this':>12}"
          f" {'CPU ms/inst':>12}")
    ratios: dict[tuple[int, str], list[float]] = {}
    for round_, associations, results in runs:
        router_seconds = results[ROUTER][0]
        for name, (seconds, cpu) in results.items():
            rate = args.instances / seconds
            ratio = seconds / router_seconds
            ratios.setdefault((associations, name), []).append(ratio)
            print(f"{round_:5} {associations:6}  {name:30} {seconds:8.2f} {rate:8.1f} {mb / seconds:8.1f} "
                  f"{ratio:12.2f} {cpu * 1000 / args.instances:12.2f}")
    print("\nrouter/peer throughput over the rounds (min / median / max):")
    for (associations, name), values in ratios.items():
        if name not in (ROUTER, CEILING):
            print(f"  {associations} association(s) vs {name:30} {min(values):5.2f} / {statistics.median(values):5.2f}"
                  f" / {max(values):5.2f}")
    print("the receive path's ceiling (nothing kept) / storescp throughput (min / median / max):")
    for associations in (1, args.associations):
        values = [results[STORESCP][0] / results[CEILING][0] for _, a, results in runs if a == associations]
        print(f"  {associations} association(s) {min(values):5.2f} / {statistics.median(values):5.2f}"
              f" / {max(values):5.2f}")
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
