"""MLLP (HL7 v2 Minimal Lower Layer Protocol): framing helpers and the threaded order listener's socket server.

A frame is ``<VT> message <FS><CR>`` (HL7 v2.5.1 Appendix C.4). :class:`FrameReader` turns a byte stream into
frames incrementally, so one message split over many TCP segments and several messages in one segment both work. A
message longer than ``max_message_bytes`` is counted and dropped as it streams in, never buffered: only its first
few kilobytes are kept, to read the MSH for the AE that refuses it. Bytes outside a frame mean the peer does not
speak MLLP (or lost sync): :class:`~pacsflow_router.errors.MllpFramingError`, and the connection is closed.

Written here rather than taken from python-hl7, whose MLLP server is asyncio-only with no size limit or timeouts and
whose client reads the ACK with one ``recv``. :func:`frame` and :func:`read_frame` are shared with the outbound MLLP
client (workflow/senders.py).

:class:`MllpServer` serves one thread per connection: a slow or idle peer holds its own thread only, and its
timeouts (``idleTimeoutSeconds`` between messages, ``messageTimeoutSeconds`` from a message's first byte to its
end) close that socket alone. Before a connection gets its thread, its address is checked against
``allowedNetworks`` (refused unread); on a TLS listener the handshake then runs on that thread, within
``messageTimeoutSeconds`` (pacsflow_router/admission.py).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..admission import RefusalHook, ServerTls, admit
from ..errors import MllpFramingError

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
"""<VT>, start of a frame."""
END_BLOCK = b"\x1c"
"""<FS>, end of a frame (followed by <CR>)."""
CARRIAGE_RETURN = b"\r"

#: Bytes of an oversized message kept to answer it (the MSH segment, with its control ID, fits easily).
HEAD_BYTES = 4096
_RECV_BYTES = 65536


def frame(message: bytes) -> bytes:
    """Wrap one ER7 message in an MLLP frame: ``<VT> message <FS><CR>``."""
    return START_BLOCK + message + END_BLOCK + CARRIAGE_RETURN


@dataclass(frozen=True)
class Frame:
    """One message read off an MLLP stream."""

    message: bytes
    """The message between <VT> and <FS> (empty when :attr:`oversized`)."""
    size: int
    """Length of the message in bytes (counted even when it was dropped)."""
    oversized: bool = False
    """Longer than the reader's ``max_message_bytes``: dropped while it streamed in."""
    head: bytes = b""
    """First :data:`HEAD_BYTES` of an oversized message (its MSH), to answer it."""


class FrameReader:
    """Incremental MLLP deframer: :meth:`feed` bytes as they arrive, take complete frames with :meth:`next_frame`.

    Parameters
    ----------
    max_message_bytes
        A message longer than this is not buffered; it comes out as a :class:`Frame` with ``oversized=True``.
    """

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self._inside = False
        self._after_end = False
        self._buffer = bytearray()
        self._size = 0
        self._oversized = False
        self._frames: deque[Frame] = deque()
        self.buffered_peak = 0
        """Largest number of message bytes held at once (tests check that an oversized message is not held)."""

    @property
    def in_frame(self) -> bool:
        """A message has started (its <VT> arrived) and has not ended yet."""
        return self._inside

    def feed(self, data: bytes) -> None:
        """Consume bytes read from the connection.

        Raises
        ------
        MllpFramingError
            Bytes other than <VT> (or CR/LF between frames) outside a frame, or a <VT> inside one; the stream cannot
            be trusted after that, so the caller closes the connection.
        """
        pos, end = 0, len(data)
        while pos < end:
            if self._after_end:
                self._after_end = False
                if data[pos:pos + 1] == CARRIAGE_RETURN:
                    pos += 1
                continue
            if not self._inside:
                byte = data[pos:pos + 1]
                if byte == START_BLOCK:
                    self._inside, self._size, self._oversized = True, 0, False
                    self._buffer.clear()
                    pos += 1
                elif byte in (b"\r", b"\n"):
                    pos += 1  # a stray line end between frames is harmless
                else:
                    raise MllpFramingError(
                        f"byte 0x{data[pos]:02x} outside an MLLP frame: the peer must send <VT> message <FS><CR>")
                continue
            stop = data.find(END_BLOCK, pos)
            chunk_end = end if stop < 0 else stop
            if data.find(START_BLOCK, pos, chunk_end) >= 0:
                raise MllpFramingError("a new MLLP frame (<VT>) started before the previous one ended (<FS>)")
            self._take(data[pos:chunk_end])
            if stop < 0:
                return
            self._finish()
            pos = stop + 1

    def _take(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._oversized:
            return
        if self._size > self.max_message_bytes:
            # Keep the head (the MSH) and drop everything else as it streams in.
            self._buffer.extend(chunk[:max(0, HEAD_BYTES - len(self._buffer))])
            del self._buffer[HEAD_BYTES:]
            self._oversized = True
            return
        self._buffer.extend(chunk)
        self.buffered_peak = max(self.buffered_peak, len(self._buffer))

    def _finish(self) -> None:
        if self._oversized:
            self._frames.append(Frame(b"", self._size, oversized=True, head=bytes(self._buffer)))
        else:
            self._frames.append(Frame(bytes(self._buffer), self._size))
        self._buffer.clear()
        self._inside = False
        self._after_end = True

    def next_frame(self) -> Frame | None:
        """The oldest complete frame not yet taken, or ``None``."""
        return self._frames.popleft() if self._frames else None


def read_frame(sock: socket.socket, reader: FrameReader, timeout: float) -> Frame:
    """Block until ``reader`` holds a complete frame from ``sock`` (an ACK, for a client) and return it.

    Parameters
    ----------
    sock
        A connected socket.
    reader
        The connection's reader (frames beyond the first stay in it for the next call).
    timeout
        Seconds to wait in all.

    Raises
    ------
    TimeoutError
        No complete frame within ``timeout``.
    ConnectionError
        The peer closed the connection first.
    MllpFramingError
        The peer's bytes are not MLLP.
    """
    deadline = time.monotonic() + timeout
    while True:
        ready = reader.next_frame()
        if ready is not None:
            return ready
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete MLLP frame within {timeout:g} s")
        sock.settimeout(left)
        data = sock.recv(_RECV_BYTES)
        if not data:
            raise ConnectionError("the MLLP peer closed the connection before a complete frame")
        reader.feed(data)


class MessageHandler(Protocol):
    """What the server calls for each framed message; both return the ER7 ACK to send back."""

    def handle(self, message: bytes) -> bytes:
        """Process one complete message."""

    def refuse_too_large(self, head: bytes, size: int) -> bytes:
        """Answer a message over ``maxMessageBytes`` that was dropped unread (``head``: its first bytes)."""


class MllpServer:
    """Threaded MLLP listener: one thread per connection, TCP_NODELAY, idle and per-message timeouts.

    Parameters
    ----------
    handler
        Called for each message; its ACK is framed and sent before the next message on that connection is read.
    host, port
        Address to bind (port 0: any free port, see :attr:`port`).
    max_message_bytes, idle_timeout, message_timeout
        ``maxMessageBytes``, ``idleTimeoutSeconds``, ``messageTimeoutSeconds`` of the routing config's listener.
    max_connections
        Connections served at once; more are closed on accept (each holds a thread).
    tls
        MLLP over TLS (``hl7Listener.tls``); plaintext when ``None``.
    allowed_networks
        ``hl7Listener.allowedNetworks``: peers outside are closed before a byte is read (empty: everyone).
    on_refused
        Given each refused connection (address, TLS handshake): the audit.
    """

    def __init__(self, handler: MessageHandler, host: str, port: int, *, max_message_bytes: int,
                 idle_timeout: float, message_timeout: float, max_connections: int = 64,
                 tls: ServerTls | None = None, allowed_networks: Sequence[str] = (),
                 on_refused: RefusalHook | None = None) -> None:
        self._handler = handler
        self._on_refused = on_refused
        self._tls = tls
        self._networks = list(allowed_networks)
        self._max_message_bytes = max_message_bytes
        self._idle_timeout = idle_timeout
        self._message_timeout = message_timeout
        self._max_connections = max_connections
        self._listener = socket.create_server((host, port), reuse_port=False, backlog=64)
        self._connections: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._accept_thread = threading.Thread(target=self._accept_loop, name="mllp-accept", daemon=True)

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        """Start accepting connections (returns at once)."""
        self._accept_thread.start()
        log.info("MLLP listener on port %d", self.port)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, close every connection, and wait for the connection threads."""
        self._stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # a listening socket that was never connected may refuse shutdown; close() still wakes accept
        self._listener.close()
        with self._lock:
            connections = list(self._connections)
            threads = list(self._threads)
        for conn in connections:
            _shutdown(conn)
        if self._accept_thread.is_alive():
            self._accept_thread.join(timeout)
        for thread in threads:
            thread.join(timeout)

    def connection_count(self) -> int:
        """Connections open now."""
        with self._lock:
            return len(self._connections)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, addr = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                log.warning("MLLP accept failed", exc_info=True)
                time.sleep(0.1)
                continue
            if not admit(conn, str(addr[0]), "mllp", self._networks, self._on_refused):
                continue
            with self._lock:
                full = len(self._connections) >= self._max_connections
                if not full:
                    self._connections.add(conn)
                    thread = threading.Thread(target=self._serve, args=(conn, str(addr[0])), name="mllp-conn",
                                              daemon=True)
                    self._threads.add(thread)
            if full:
                log.warning("MLLP connection refused: %d connections already open", self._max_connections)
                conn.close()
                continue
            thread.start()

    def _serve(self, conn: socket.socket, address: str) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                wrapped = self._tls.wrap(conn, address, "mllp", self._message_timeout, self._on_refused)
                with self._lock:  # stop() must close the TLS socket: the plain one was detached by the wrap
                    self._connections.discard(conn)
                    if wrapped is not None:
                        self._connections.add(wrapped)
                if wrapped is None:
                    return
                conn = wrapped
            self._converse(conn)
        except MllpFramingError as exc:
            log.warning("MLLP connection closed: %s", exc)
        except OSError as exc:
            if not self._stopping.is_set():
                log.info("MLLP connection ended: %s", exc.strerror or type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - a bug on one connection must not stop the listener
            # Class name only: an exception's text may quote the message (patient data). No ACK was sent, so the
            # sender resends; nothing was stored unless the store committed (then the resend is a duplicate).
            log.error("MLLP connection closed after an unexpected %s", type(exc).__name__)
        finally:
            _shutdown(conn)
            conn.close()
            with self._lock:
                self._connections.discard(conn)
                self._threads.discard(threading.current_thread())

    def _converse(self, conn: socket.socket) -> None:
        reader = FrameReader(self._max_message_bytes)
        last_activity = time.monotonic()
        message_started: float | None = None
        while not self._stopping.is_set():
            now = time.monotonic()
            if reader.in_frame:
                assert message_started is not None
                deadline, why = message_started + self._message_timeout, "message timeout"
            else:
                deadline, why = last_activity + self._idle_timeout, "idle timeout"
            if now >= deadline:
                log.info("MLLP connection closed: %s", why)
                return
            conn.settimeout(deadline - now)
            try:
                data = conn.recv(_RECV_BYTES)
            except TimeoutError:
                continue  # the loop closes it on the deadline
            if not data:
                return
            reader.feed(data)
            while (got := reader.next_frame()) is not None:
                conn.settimeout(self._message_timeout)
                if got.oversized:
                    log.warning("HL7 message of %d bytes refused: above maxMessageBytes %d", got.size,
                                self._max_message_bytes)
                    ack = self._handler.refuse_too_large(got.head, got.size)
                else:
                    ack = self._handler.handle(got.message)
                conn.sendall(frame(ack))
            last_activity = time.monotonic()
            if not reader.in_frame:
                message_started = None
            elif message_started is None or START_BLOCK in data:
                # The frame being read began in this chunk (<VT> cannot occur inside a frame): its clock starts now.
                message_started = last_activity


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the peer
