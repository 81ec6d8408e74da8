"""HAPI HL7v2 2.6.0 (Java) as the independent HL7 v2 peer: an MLLP receiver that parses and validates, and a sender.

The program is ``tests/peers/hapi/Peer.java``; its jars come from Maven Central through ``make hl7-peer``
(``scripts/fetch-hl7-peer.sh``) into ``${PACSFLOW_CACHE:-~/.cache/pacsflow}/hapi/lib``. It is compiled once per
version of ``Peer.java`` into the same cache (the source launcher would compile it at every start)::

    with HapiReceiver(tmp_path / "rx.jsonl") as rx:        # free loopback port, waits for READY
        acks = send(rx.port, [msg.encoded("orm23")])       # HAPI's own client, one connection
        assert acks[0]["ack"] == "AA"
        rx.records()                                       # one dict per message the receiver answered

A record holds ``controlId``, ``type`` (MSH-9), ``version``, ``charset`` (MSH-18), ``ack`` (AA/AE/AR), ``error``,
``orc1``, ``priority`` (TQ1-9, else ORC-7.6, else OBR-27.6), ``obr4``, ``obr4Text``, ``obr18``, ``obr31Text``,
``patientFamily`` and ``patientGiven`` (text fields decoded) and ``obx`` (``obx3``/``obx5``/``obx11`` per OBX, as encoded). Each line is written
before the ACK goes out: a test that has its ACK can count deliveries at the receiver.

MLLP over TLS: pass ``tls=JavaTls(keystore=..., truststore=...)`` (PKCS#12 files, e.g. from tests/peers/certs.py)
to :class:`HapiReceiver` or :func:`send`; the JVM gets them as ``javax.net.ssl.*`` properties and ``Peer`` runs
with ``--tls true``.

Stdlib only, like the other launchers, so benchmarks can use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.peers.net import free_port, stop_process

SOURCE = Path(__file__).with_name("hapi") / "Peer.java"
HOST = "127.0.0.1"
#: The jars ``scripts/fetch-hl7-peer.sh`` puts in the lib directory, by file name prefix.
REQUIRED_JARS = ("hapi-base-", "hapi-structures-v23-", "hapi-structures-v231-", "hapi-structures-v251-", "commons-lang3-",
                 "joda-time-", "slf4j-api-", "slf4j-simple-")


class HapiMissing(RuntimeError):
    """The HAPI jars or a JDK are not on this machine."""


def cache_dir() -> Path:
    """``${PACSFLOW_CACHE:-~/.cache/pacsflow}/hapi``."""
    return Path(os.environ.get("PACSFLOW_CACHE", Path.home() / ".cache" / "pacsflow")) / "hapi"


def lib_dir() -> Path:
    """The directory holding the HAPI jars; :class:`HapiMissing` naming ``make hl7-peer`` if any is missing."""
    lib = cache_dir() / "lib"
    names = [p.name for p in lib.glob("*.jar")] if lib.is_dir() else []
    missing = [j for j in REQUIRED_JARS if not any(n.startswith(j) for n in names)]
    if missing:
        raise HapiMissing(f"HAPI HL7v2 jars missing in {lib} ({', '.join(m.rstrip('-') for m in missing)}): "
                          "run `make hl7-peer` (scripts/fetch-hl7-peer.sh)")
    for tool in ("java", "javac"):
        if shutil.which(tool) is None:
            raise HapiMissing(f"{tool} not found: the HL7 peer needs a JDK 17 (apt-get install openjdk-17-jdk-headless)")
    return lib


def classes_dir() -> Path:
    """``Peer.java`` compiled against the jars, once per version of the source (cached by its sha1)."""
    lib = lib_dir()
    digest = hashlib.sha1(SOURCE.read_bytes()).hexdigest()[:12]
    out = cache_dir() / f"classes-{digest}"
    if (out / "Peer.class").is_file():
        return out
    tmp = Path(tempfile.mkdtemp(prefix="classes-", dir=cache_dir()))
    proc = subprocess.run(["javac", "-nowarn", "-encoding", "UTF-8", "-cp", f"{lib}/*", "-d", str(tmp),
                           str(SOURCE)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"javac failed on {SOURCE}:\n{proc.stdout}{proc.stderr}")
    try:
        tmp.rename(out)
    except OSError:  # another process compiled the same source first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass(frozen=True)
class JavaTls:
    """PKCS#12 key and trust stores for the JVM's TLS (JSSE): MLLP over TLS on the HAPI side."""

    keystore: Path | None = None
    """Own key and certificate (the receiver's server certificate, or the sender's client certificate)."""
    truststore: Path | None = None
    """CA certificates trusted to verify the other side."""
    password: str = "changeit"

    def jvm_options(self) -> list[str]:
        """``-Djavax.net.ssl.*`` options."""
        out = []
        for kind, path in (("keyStore", self.keystore), ("trustStore", self.truststore)):
            if path is not None:
                out += [f"-Djavax.net.ssl.{kind}={path}", f"-Djavax.net.ssl.{kind}Type=PKCS12",
                        f"-Djavax.net.ssl.{kind}Password={self.password}"]
        return out


def command(*args: str, tls: JavaTls | None = None) -> list[str]:
    """The ``java`` command line running ``Peer`` with ``args`` (over TLS with ``tls``)."""
    lib = lib_dir()
    if tls is None:
        return ["java", "-cp", f"{lib}/*{os.pathsep}{classes_dir()}", "Peer", *args]
    return ["java", *tls.jvm_options(), "-cp", f"{lib}/*{os.pathsep}{classes_dir()}", "Peer", *args, "--tls", "true"]


class HapiReceiver:
    """HAPI's MLLP server (``Peer receive``) on a free loopback port; records land in ``out`` (JSON lines).

    ``fail_first``: answer AE to the first N messages that would otherwise get AA (a receiver that is up but
    refusing, for retry tests). :meth:`stop` / :meth:`start` restart it on the same port and file, so a test can take
    the receiver down and bring it back. Stopped by PID.
    """

    def __init__(self, out: Path, port: int | None = None, *, fail_first: int = 0,
                 startup_timeout: float = 60.0, tls: JavaTls | None = None) -> None:
        self.out = Path(out)
        self.tls = tls
        self.port = port or free_port()
        self.fail_first = fail_first
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[str] | None = None
        self._log: list[str] = []

    def start(self) -> HapiReceiver:
        """Start the receiver and block until it prints ``READY <port>``."""
        args = ["receive", "--port", str(self.port), "--out", str(self.out), "--fail-first", str(self.fail_first)]
        self.proc = subprocess.Popen(command(*args, tls=self.tls), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     encoding="utf-8", cwd=self.out.parent)
        ready = threading.Event()
        threading.Thread(target=self._pump, args=(self.proc, ready), daemon=True).start()
        if not ready.wait(self.startup_timeout):
            self.stop()
            raise RuntimeError(f"HAPI receiver did not print READY within {self.startup_timeout:.0f}s:\n"
                               + self.log_tail())
        if self.proc.poll() is not None:
            raise RuntimeError(f"HAPI receiver exited with {self.proc.returncode}:\n{self.log_tail()}")
        return self

    def _pump(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self._log.append(line)
            if line.startswith("READY "):
                ready.set()
        ready.set()  # exited: start() reports it

    def log_tail(self, lines: int = 40) -> str:
        """The receiver's last output lines (its log goes to stdout with the READY line)."""
        return "".join(self._log[-lines:])

    def stop(self) -> None:
        """Stop the receiver by PID (SIGTERM: HAPI closes its server socket; SIGKILL after 10 s)."""
        stop_process(self.proc)
        self.proc = None

    def records(self) -> list[dict[str, Any]]:
        """Every message the receiver answered so far, in order (one dict per message, duplicates included)."""
        if not self.out.exists():
            return []
        text = self.out.read_text(encoding="utf-8")
        # A line being written has no newline yet: leave it for the next call.
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def wait_records(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Block until at least ``count`` records are there; return them all."""
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records()
            if len(recs) >= count or time.monotonic() > deadline:
                if len(recs) < count:
                    raise AssertionError(f"HAPI receiver recorded {len(recs)} messages, expected {count} within "
                                         f"{timeout:.0f}s\n{self.log_tail()}")
                return recs
            time.sleep(0.1)

    def __enter__(self) -> HapiReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _files(messages: Iterable[bytes | str | Path], tmp: Path) -> list[str]:
    paths = []
    for i, m in enumerate(messages):
        if isinstance(m, Path):
            paths.append(str(m))
            continue
        path = tmp / f"msg{i:04d}.hl7"
        # A str message is written in UTF-8; pass bytes to send another MSH-18 character set as it is.
        path.write_bytes(m.encode("utf-8") if isinstance(m, str) else m)
        paths.append(str(path))
    return paths


def send(port: int, messages: Sequence[bytes | str | Path], *, host: str = HOST,
         timeout: float = 120.0, ack_timeout: int = 30, tls: JavaTls | None = None) -> list[dict[str, Any]]:
    """Send ``messages`` over one MLLP connection with HAPI's client; one dict per message, in order.

    Each dict has ``ack`` (MSA-1, None when nothing came back), ``controlId`` (MSA-2), ``text`` (MSA-3) and
    ``error`` (the ERR segment, or why no ACK came). The messages are parsed by HAPI without validation and sent as
    HAPI encodes them (the receiver judges them, not the sender).
    """
    with tempfile.TemporaryDirectory(prefix="hapi-send-") as tmp:
        paths = _files(messages, Path(tmp))
        proc = subprocess.run(command("send", "--host", host, "--port", str(port), "--timeout", str(ack_timeout),
                                      *paths, tls=tls),
                              capture_output=True, text=True, encoding="utf-8", timeout=timeout, check=False)
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if len(results) != len(messages):
        raise RuntimeError(f"HAPI sender printed {len(results)} results for {len(messages)} messages "
                           f"(exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return results


def sendmany(port: int, message: bytes | str | Path, count: int, *, host: str = HOST,
             timeout: float = 600.0) -> dict[str, Any]:
    """Send ``message`` ``count`` times over one connection as distinct orders; ``msgsPerSecond`` and ``acks``.

    MSH-10 and the accession (OBR-18, IPC-1) are made unique per message, so every message is a new order.

    One extra message goes first, untimed (connection, class loading); it is not in ``count`` nor in ``acks``.
    """
    with tempfile.TemporaryDirectory(prefix="hapi-sendmany-") as tmp:
        (path,) = _files([message], Path(tmp))
        proc = subprocess.run(command("sendmany", "--host", host, "--port", str(port), "--count", str(count), path),
                              capture_output=True, text=True, encoding="utf-8", timeout=timeout, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"HAPI sendmany failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result
