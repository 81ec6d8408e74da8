"""The HL7 order listener alone in its own process (spool + order store + MLLP + ``POST /hl7/orm``).

The order store is a SQLite results store next to the spool (:func:`store_path`).

Tests run it as a separate process so that they can measure its memory (a 20 MB message must not be buffered),
kill it with SIGKILL after an AA, and read its spool from outside like an operator would. Run as::

    python -m tests.peers.hl7listener SPOOL_DIR MLLP_PORT HTTP_PORT [max_message_bytes idle_s message_s]

It prints ``ready`` once both ports listen and serves until SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.net import free_port, stop_process, wait_port


def store_path(spool_dir: Path) -> Path:
    """The results store (SQLite file) holding the orders of the listener whose spool is ``spool_dir``."""
    return spool_dir.parent / f"{spool_dir.name}-store.db"


@dataclass
class ListenerProcess:
    """A running listener process and where it listens."""

    spool_dir: Path
    max_message_bytes: int = 1_048_576
    idle_timeout: float = 300.0
    message_timeout: float = 30.0
    port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None

    def start(self) -> ListenerProcess:
        """Start it and wait until both ports accept connections."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "a") as log_file:  # a file, not a pipe nobody reads (a full pipe would block it)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.peers.hl7listener", str(self.spool_dir), str(self.port),
                 str(self.http_port), str(self.max_message_bytes), str(self.idle_timeout),
                 str(self.message_timeout)],
                stdout=log_file, stderr=subprocess.STDOUT, text=True, env=env,
                cwd=Path(__file__).resolve().parents[2])
        wait_port(self.port, 60, self.proc)
        wait_port(self.http_port, 60, self.proc)
        return self

    @property
    def log_path(self) -> Path:
        """Where the process's output (its log, at INFO) goes."""
        return self.spool_dir.parent / f"hl7listener-{self.port}.log"

    def log(self) -> str:
        """The process's output so far."""
        return self.log_path.read_text() if self.log_path.exists() else ""

    def rss_peak_bytes(self) -> int:
        """The process's peak resident set size (VmHWM)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc status")

    def kill9(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 10 s)."""
        stop_process(self.proc)

    def orders(self) -> list[tuple[str, str, str]]:
        """(accession, patient ID, status) of every stored order, read from the results store's file."""
        db = sqlite3.connect(f"file:{store_path(self.spool_dir)}?mode=ro", uri=True, timeout=10)
        try:
            return sorted(db.execute("SELECT accession, patient_id, status FROM orders").fetchall())
        except sqlite3.OperationalError:
            return []  # no orders table yet
        finally:
            db.close()


def main(argv: list[str]) -> None:
    import logging

    from pacsflow_router.config import Hl7Listener as Hl7ListenerConfig
    from pacsflow_router.ingest.spool import Spool
    from pacsflow_router.workflow.listener import Hl7Listener
    from pacsflow_router.workflow.orders import OrderStore

    spool_dir, port, http_port = argv[0], int(argv[1]), int(argv[2])
    max_bytes, idle, message = (int(argv[3]), float(argv[4]), float(argv[5])) if len(argv) > 3 else (
        1_048_576, 300.0, 30.0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    store = OrderStore(Spool(spool_dir, 0.999), f"sqlite:///{store_path(Path(spool_dir)).resolve()}")
    config = Hl7ListenerConfig(port=port, http_port=http_port, max_message_bytes=max_bytes,
                               idle_timeout_seconds=idle, message_timeout_seconds=message)
    listener = Hl7Listener(config, store)
    listener.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    stop.wait()
    listener.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
