"""Run dcmtk's ``storescu``, ``echoscu`` and ``storescp`` as real DICOM peers (Debian package ``dcmtk``).

Every process gets ``TCP_NODELAY=1`` in its environment: Debian's dcmtk leaves Nagle on otherwise.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


def dcmtk_env() -> dict[str, str]:
    """The environment for dcmtk processes: the caller's plus ``TCP_NODELAY=1``."""
    return {**os.environ, "TCP_NODELAY": "1"}


def echoscu(port: int, *, called: str = "PACSFLOW", calling: str = "STORESCU", host: str = HOST,
            timeout: float = 30) -> subprocess.CompletedProcess:
    """C-ECHO with ``echoscu``; ``returncode == 0`` means association accepted and echo answered."""
    return subprocess.run(
        ["echoscu", "-v", "-to", "10", "-ta", "10", "-aec", called, "-aet", calling, host, str(port)],
        capture_output=True, text=True, timeout=timeout, env=dcmtk_env(), check=False,
    )


def storescu_command(port: int, files: Iterable[str | Path], *, called: str = "PACSFLOW",
                     calling: str = "STORESCU", host: str = HOST, extra: Sequence[str] = ()) -> list[str]:
    """The ``storescu`` command line sending ``files`` over ONE association.

    ``-R`` proposes exactly the SOP class / transfer syntax pairs of the files, so compressed files go as they are.
    """
    return ["storescu", "-v", "-R", "-to", "10", "-ta", "10", "-aec", called, "-aet", calling, *extra,
            host, str(port), *(str(f) for f in files)]


def storescu(port: int, files: Iterable[str | Path], *, timeout: float = 300, **kwargs) -> StoreResult:
    """Send ``files`` with ``storescu`` over one association and parse the per-file responses."""
    proc = subprocess.run(storescu_command(port, files, **kwargs), capture_output=True, text=True,
                          timeout=timeout, env=dcmtk_env(), check=False)
    return StoreResult.parse(proc.returncode, proc.stdout + proc.stderr)


_SENDING = re.compile(r"Sending file: (.+)$")
_RESPONSE = re.compile(r"Received Store Response(?: \(([^)]*)\))?")
_STATUS = re.compile(r"DIMSE Status\s*:\s*(0x[0-9A-Fa-f]{4})")


@dataclass
class StoreResult:
    """What storescu reported: return code, output, and per file the response it received.

    ``responses`` maps each file storescu sent to the response text (``"Success"``, ``"Refused: OutOfResources"``
    ...), for files whose response arrived; ``acknowledged`` lists the files answered with Success.
    """

    returncode: int
    output: str
    responses: dict[str, str]

    @classmethod
    def parse(cls, returncode: int, output: str) -> StoreResult:
        responses: dict[str, str] = {}
        current: str | None = None
        for line in output.splitlines():
            if m := _SENDING.search(line):
                current = m.group(1).strip()
            elif (m := _RESPONSE.search(line)) and current is not None:
                responses[current] = m.group(1) or "?"
                current = None
        return cls(returncode, output, responses)

    @property
    def acknowledged(self) -> list[str]:
        """Files answered with status Success (0x0000)."""
        return [f for f, r in self.responses.items() if r == "Success"]


def wait_for_port(port: int, host: str = HOST, timeout: float = 30) -> None:
    """Block until something accepts TCP connections on ``port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


class StoreSCP:
    """dcmtk ``storescp`` writing every received instance into ``out_dir`` (a reference peer for benches/tests).

    Use as a context manager; the process is stopped by its PID on exit.
    """

    def __init__(self, out_dir: Path, port: int, ae_title: str = "STORESCP", *, fork: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.port = port
        self.ae_title = ae_title
        self.fork = fork  # --fork: one child process per association (several at once); else one at a time
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> StoreSCP:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # storescp (dcmtk 3.6.7) writes files without fsync and cannot bind to one address: it listens on all.
        cmd = ["storescp", "-aet", self.ae_title, "-od", str(self.out_dir), "--accept-all",
               *(["--fork"] if self.fork else []), str(self.port)]
        self.proc = subprocess.Popen(cmd, env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_port(self.port)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stderr is not None:
                self.proc.stderr.close()

