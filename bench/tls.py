"""Ingest over DICOM TLS vs plaintext: the router and dcmtk ``storescp`` measured in the same run, same files.

``python -m bench tls`` (or ``python -m bench.tls [--count N --size S --repeats R]``):

N (default 150) 512x512 int16 CT instances (512 KB each) sent by dcmtk ``storescu`` over ONE association, plaintext
and over mutual TLS (``+tls`` with a client certificate, ``+cf`` the test CA; the server requires and verifies it),
to (a) the router's :class:`~pacsflow_router.ingest.scp.DicomReceiver` writing the durable spool, in its own process,
and (b) dcmtk ``storescp +tls`` writing files. Each run is repeated R times (plain and TLS alternating, fresh
spool/output each time) and the best time is kept. Reported: seconds, MB/s, the TLS/plain time ratio of each receiver,
and the protocol and cipher ``openssl s_client`` negotiates with each TLS server. Certificates are made per run in a
temporary directory (EC P-256, tests/peers/certs.py).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.ingest import RouterProcess, make_instances, serve_receiver
from tests.peers.certs import Issued, Pki
from tests.peers.dcmtk import dcmtk_env, storescu_command, wait_for_port
from tests.peers.net import free_port, stop_process

HOST = "127.0.0.1"


def _serve(spool_dir: str, cert: str, key: str, ca: str) -> None:
    """Child process: the router's receiver, plaintext when ``cert`` is ``-``; prints its port, stops on EOF."""
    if cert == "-":
        serve_receiver(spool_dir)
    else:
        serve_receiver(spool_dir, tls={"certFile": cert, "keyFile": key, "clientCaFile": ca,
                                       "clientCertificate": "required"})


def start_router(spool: Path, server: Issued | None) -> RouterProcess:
    """The receiver in a child process (``--serve``), TLS with ``server``'s certificate or plaintext."""
    args = (str(server.cert), str(server.key), str(server.ca)) if server else ("-", "-", "-")
    return RouterProcess(spool, module="bench.tls", serve_args=args)


class StoreScp:
    """dcmtk storescp, plaintext or ``+tls`` requiring a client certificate from the CA; stopped by PID."""

    def __init__(self, out: Path, server: Issued | None) -> None:
        out.mkdir(parents=True)
        self.port = free_port()
        tls = ["+tls", str(server.key), str(server.cert), "+cf", str(server.ca), "-rc"] if server else []
        self.proc = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(out), *tls, str(self.port)],
                                     env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def __enter__(self) -> StoreScp:
        return self

    def __exit__(self, *exc: object) -> None:
        stop_process(self.proc)


def send(port: int, called: str, files: list[Path], client: Issued | None) -> float:
    """Seconds for storescu to send ``files`` over one association (TLS with ``client``'s certificate if given)."""
    extra = ["+tls", str(client.key), str(client.cert), "+cf", str(client.ca)] if client else []
    started = time.perf_counter()
    proc = subprocess.run(storescu_command(port, files, called=called, extra=extra), capture_output=True, text=True,
                          env=dcmtk_env(), check=False)
    elapsed = time.perf_counter() - started
    ok = proc.stdout.count("Received Store Response (Success)") + proc.stderr.count("Received Store Response (Success)")
    if proc.returncode != 0 or ok != len(files):
        tail = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith(("E:", "F:"))][-3:]
        raise RuntimeError(f"storescu to {called} stored {ok}/{len(files)}: {' | '.join(tail)}")
    return elapsed


def negotiated(port: int, client: Issued) -> str:
    """Protocol and cipher that ``openssl s_client`` (default offer: TLS 1.2 and 1.3) gets from the server."""
    out = subprocess.run(["openssl", "s_client", "-connect", f"{HOST}:{port}", "-CAfile", str(client.ca),
                          "-cert", str(client.cert), "-key", str(client.key), "-brief"],
                         input=b"", capture_output=True, timeout=30, check=False)
    text = (out.stdout + out.stderr).decode(errors="replace")
    wanted = [ln.split(":", 1)[1].strip() for ln in text.splitlines()
              if ln.startswith(("Protocol version:", "Ciphersuite:"))]
    return " ".join(wanted) or "?"


def run(count: int, size: int, repeats: int) -> int:
    for tool in ("storescu", "storescp", "openssl"):
        if shutil.which(tool) is None:
            print(f"{tool} is missing: install dcmtk and openssl (scripts/install-system-deps.sh)")
            return 1
    with tempfile.TemporaryDirectory(prefix="pacsflow-bench-tls-") as tmp:
        work = Path(tmp)
        files = make_instances(work / "in", count, size)
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        pki = Pki(work / "pki")
        server, client = pki.server(), pki.client("STORESCU")
        best: dict[tuple[str, bool], float] = {}
        protocols: dict[str, str] = {}
        for r in range(repeats):
            for use_tls in (False, True):
                key = ("router", use_tls)
                with start_router(work / f"spool-{r}-{use_tls}", server if use_tls else None) as router:
                    best[key] = min(best.get(key, 1e9), send(router.port, "PACSFLOW", files,
                                                             client if use_tls else None))
                    if use_tls and r == 0:
                        protocols["router"] = negotiated(router.port, client)
                key = ("storescp", use_tls)
                with StoreScp(work / f"scp-{r}-{use_tls}", server if use_tls else None) as scp:
                    best[key] = min(best.get(key, 1e9), send(scp.port, "STORESCP", files,
                                                             client if use_tls else None))
                    if use_tls and r == 0:
                        protocols["storescp"] = negotiated(scp.port, client)
        print(f"{count} instances of {size}x{size} int16 ({megabytes:.0f} MB), one association, best of {repeats}")
        print(f"{'receiver':<34}{'plain s':>9}{'TLS s':>9}{'plain MB/s':>12}{'TLS MB/s':>10}{'TLS/plain':>11}")
        for name, label in (("router", "router (fsync'ed spool)"), ("storescp", "dcmtk storescp (files, no fsync)")):
            plain, tls = best[(name, False)], best[(name, True)]
            print(f"{label:<34}{plain:>9.2f}{tls:>9.2f}{megabytes / plain:>12.1f}{megabytes / tls:>10.1f}"
                  f"{tls / plain:>10.2f}x")
        for name, proto in protocols.items():
            print(f"negotiated with {name}: {proto}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tls", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=150)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--serve", nargs=4, metavar=("SPOOL", "CERT", "KEY", "CA"), help=argparse.SUPPRESS)
    args = parser.parse_args([] if argv is None else argv)
    if args.serve:
        _serve(*args.serve)
        return 0
    return run(args.count, args.size, args.repeats)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
