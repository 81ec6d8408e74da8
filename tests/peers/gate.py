"""A loopback relay between a DICOM sender and a receiver that stops a C-STORE stream at an exact instance.

Tests that kill a receiver "mid-association" must not depend on how fast the sender is: polling a counter and then
killing lands anywhere between the first and the last instance (or after the last) depending on the machine.
:class:`StoreGate` sits between the sender (e.g. dcmtk ``storescu``) and the receiver, relays the association
unchanged and holds it at a known point::

    with StoreGate(router_port, let_through=10) as gate:
        proc = subprocess.Popen(storescu_command(gate.port, paths), ...)
        gate.wait_held(timeout=60)   # the receiver has answered exactly 10 C-STOREs; the 11th is held back
        router.kill9()               # the association dies with instance 11 in flight

(:func:`storescu_killed_mid_stream` is that, ready to call.)

It parses only PS3.8 framing (PDU type and length, P-DATA-TF presentation data values and their message control
header), never DICOM content. ``held`` is set when the sender starts the C-STORE after the ``let_through``-th one:
a synchronous sender (storescu) sends the next request only after the previous response, so at that moment the
receiver has answered exactly ``let_through`` requests. That request is not forwarded; the association stays open
until either side closes it, and then both sides are closed.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from tests.peers.dcmtk import StoreResult, dcmtk_env, storescu_command

P_DATA_TF = 0x04
_COMMAND = 0x01  # message control header bit 0: command (1) or data set (0) fragment, PS3.8 E.2
_LAST = 0x02  # bit 1: last fragment of its command or data set


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    """``n`` bytes from ``sock``, or None when the peer closed (or reset) first."""
    chunks = bytearray()
    while len(chunks) < n:
        try:
            chunk = sock.recv(n - len(chunks))
        except OSError:
            return None
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)


def _fragments(body: bytes) -> list[int]:
    """The message control header of each presentation data value in a P-DATA-TF body (PS3.8 9.3.5)."""
    headers = []
    offset = 0
    while offset + 6 <= len(body):
        (length,) = struct.unpack_from(">I", body, offset)
        headers.append(body[offset + 5])  # after the item length (4) and the presentation context ID (1)
        offset += 4 + length
    return headers


class StoreGate:
    """Relays one or more associations to ``upstream_port``; lets ``let_through`` C-STORE data sets pass.

    Parameters
    ----------
    upstream_port : int
        The receiver's port on ``host``.
    let_through : int
        Data sets (over all associations) forwarded before the gate holds the next request.
    host : str
        Loopback address of the receiver (the gate listens on the same one).
    """

    def __init__(self, upstream_port: int, let_through: int, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self.let_through = let_through
        self.forwarded = 0
        self.held = threading.Event()
        self._listener = socket.create_server((host, 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> StoreGate:
        self._spawn(self._accept)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def wait_held(self, timeout: float) -> None:
        """Block until the gate holds a request; fail if the sender never got that far."""
        if not self.held.wait(timeout):
            raise AssertionError(f"the sender never started C-STORE number {self.let_through + 1} "
                                 f"({self.forwarded} data sets forwarded)")

    def close(self) -> None:
        """Close every socket (listener, both sides of every association) and wait for the relay threads."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # never connected or already closed
            sock.close()
        for thread in self._threads:
            thread.join(timeout=10)

    # -- relay --------------------------------------------------------------------------------------------------
    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.upstream)
            for sock in (client, server):
                # Nagle would delay every small PDU by tens of milliseconds (STYLE.md: TCP_NODELAY everywhere).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            self._spawn(self._requests, client, server)
            self._spawn(self._responses, server, client)

    def _hangup(self, *socks: socket.socket) -> None:
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _responses(self, server: socket.socket, client: socket.socket) -> None:
        """Receiver -> sender, unchanged; when the receiver goes away, so does the sender's connection."""
        while True:
            try:
                data = server.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._hangup(client, server)
                return
            try:
                client.sendall(data)
            except OSError:
                self._hangup(client, server)
                return

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        """Sender -> receiver, one PDU at a time, counting data sets; the first request past the limit is held."""
        while True:
            header = _read_exact(client, 6)
            body = _read_exact(client, struct.unpack(">I", header[2:6])[0]) if header else None
            if header is None or body is None:
                self._hangup(server, client)
                return
            fragments = _fragments(body) if header[0] == P_DATA_TF else []
            if self.forwarded >= self.let_through and any(h & _COMMAND for h in fragments):
                # The next C-STORE begins: hold it (and everything after it) until someone closes the association.
                self.held.set()
                while True:
                    try:
                        if not client.recv(65536):
                            break
                    except OSError:
                        break
                self._hangup(server, client)
                return
            try:
                server.sendall(header + body)
            except OSError:
                self._hangup(server, client)
                return
            self.forwarded += sum(1 for h in fragments if not h & _COMMAND and h & _LAST)


def storescu_killed_mid_stream(port: int, paths: Sequence[str | Path], *, let_through: int, kill: Callable[[], object],
                               log: Path) -> StoreResult:
    """``storescu`` sends ``paths`` to ``port`` through a :class:`StoreGate`; ``kill`` runs once the receiver has
    answered exactly ``let_through`` C-STOREs and the next is held, so it lands mid-stream on any machine.

    storescu writes to ``log``, read only after it exited (nothing is parsed while it may still be writing).
    """
    with StoreGate(port, let_through=let_through) as gate, log.open("w") as out:
        proc = subprocess.Popen(storescu_command(gate.port, paths), stdout=out, stderr=subprocess.STDOUT,
                                env=dcmtk_env())
        try:
            gate.wait_held(timeout=120)
            kill()
        finally:
            proc.wait(timeout=60)
    return StoreResult.parse(proc.returncode, log.read_text())
