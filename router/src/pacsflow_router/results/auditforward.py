"""Forwards the audit chain to a syslog collector (``audit.syslog``) as DICOM audit messages over TLS.

A durable cursor (``audit_forward``, row ``syslog``: the last chain id sent) makes forwarding survive a collector
that is down and a router restart: records are read from the store after the cursor, sent as octet-counted RFC 5424
messages (:mod:`.atna`) over one TLS connection (:func:`pacsflow_router.tls.client_context`: BCP 195, the collector's
certificate verified), and the cursor moves only after the send returned. While the collector is unreachable
nothing moves and the next try comes ``retrySeconds`` later.

Syslog over TLS has no application acknowledgement (RFC 5425), so bytes the kernel accepted just before the
collector died can be lost in flight; on every new connection the forwarder therefore sends again the last
:data:`REPLAY` records before the cursor. Delivery is at least once: a collector deduplicates by the chain record
id (``ParticipantObjectID`` ``audit-chain:<id>``).

One chain, one cursor, one sender: routers that share a PostgreSQL results store share its chain and its cursor, so
only the holder of a session advisory lock (:data:`LOCK_KEY`, on a connection kept for it) forwards; the others
stand by and try for the lock every ``retrySeconds``. Without it every router sent every record (and raced on the
cursor). The owner gives the lock up when it stops, when the collector fails (another router may reach it) and when
its database session is lost (the server frees the lock; the owner notices on its next round, before it sends); the
next owner's first connection replays as above, so a handover costs at most :data:`REPLAY` duplicates. A SQLite store
belongs to one router pod (its volume is ReadWriteOnce), so there is nothing to share and no lock.
"""

from __future__ import annotations

import datetime as dt
import logging
import select as io_select
import socket
import ssl
import threading
import zlib

from sqlalchemy import insert, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from ..config import AuditSyslog
from ..tls import client_context
from . import atna, chain
from .schema import AUDIT_FORWARD

log = logging.getLogger(__name__)

NAME = "syslog"
BATCH = 500
#: Records sent again on each new connection (see the module docstring).
REPLAY = 50
POLL_SECONDS = 0.5
#: ``pg_try_advisory_lock(key1, key2)`` of the syslog forwarder: "pacs" and the CRC-32 of the cursor's name.
LOCK_KEY = (0x70616373, zlib.crc32(b"audit_forward:" + NAME.encode()) & 0x7FFFFFFF)


class AuditForwarder:
    """Sends audit chain records after the durable cursor to the collector in ``cfg``.

    Parameters
    ----------
    engine : Engine
        The results store (migrated).
    cfg : AuditSyslog
        The collector.
    """

    def __init__(self, engine: Engine, cfg: AuditSyslog) -> None:
        self.engine = engine
        self.cfg = cfg
        self._context = client_context(cfg.tls)
        self._sock: ssl.SSLSocket | None = None
        self._thread: threading.Thread | None = None
        self._shared = engine.dialect.name == "postgresql"
        self._lock_conn: Connection | None = None
        self._lock_pid: int | None = None

    @property
    def owner(self) -> bool:
        """Whether this forwarder holds the store's forwarding lock (always, on a store that is not shared)."""
        return not self._shared or self._lock_conn is not None

    def _own(self) -> bool:
        """Keep or take the forwarding lock; False while another router holds it.

        The lock is a PostgreSQL session advisory lock on a connection of its own (autocommit: no transaction stays
        open). A kept lock is checked by the backend PID of that connection: a new PID means the session, and with
        it the lock, was lost.
        """
        if not self._shared:
            return True
        if self._lock_conn is not None:
            try:
                if self._lock_conn.execute(text("SELECT pg_backend_pid()")).scalar() == self._lock_pid:
                    return True
            except SQLAlchemyError:
                pass
            log.warning("audit forwarding lost its database session and with it the forwarding lock")
            self.close()  # another router may be sending by now: reconnect (and replay) only as the owner again
            self.release()
        conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k1, :k2), pg_backend_pid()"),
                               {"k1": LOCK_KEY[0], "k2": LOCK_KEY[1]}).one()
        except BaseException:
            conn.close()
            raise
        if not got[0]:
            conn.close()
            return False
        self._lock_conn, self._lock_pid = conn, int(got[1])
        log.info("audit forwarding to %s:%d: this router now sends the shared audit chain", self.cfg.host,
                 self.cfg.port)
        return True

    def release(self) -> None:
        """Give the forwarding lock up: the lock's connection is discarded, not pooled, so its session (and the
        lock) ends even when the database cannot be reached."""
        conn, self._lock_conn, self._lock_pid = self._lock_conn, None, None
        if conn is not None:
            conn.invalidate()
            conn.close()

    def cursor(self) -> int:
        """The last chain id sent (0: none)."""
        with self.engine.connect() as conn:
            found = conn.execute(select(AUDIT_FORWARD.c.last_id).where(AUDIT_FORWARD.c.name == NAME)).scalar()
        return int(found or 0)

    def _advance(self, last_id: int) -> None:
        f = AUDIT_FORWARD.c
        now = dt.datetime.now(dt.UTC)
        with self.engine.begin() as conn:
            done = conn.execute(update(AUDIT_FORWARD).where(f.name == NAME, f.last_id < last_id)
                                .values(last_id=last_id, updated_at=now)).rowcount
            if not done and conn.execute(select(f.last_id).where(f.name == NAME)).first() is None:
                conn.execute(insert(AUDIT_FORWARD).values(name=NAME, last_id=last_id, updated_at=now))

    def _connect(self) -> ssl.SSLSocket:
        # client_context rebuilds when the CA bundle or client certificate changes: a rotated Secret applies.
        self._context = client_context(self.cfg.tls)
        raw = socket.create_connection((self.cfg.host, self.cfg.port), timeout=10)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return self._context.wrap_socket(raw, server_hostname=self.cfg.tls.server_name or self.cfg.host)
        except BaseException:
            raw.close()
            raise

    def close(self) -> None:
        """Close the connection to the collector (the next send reconnects)."""
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    @staticmethod
    def _peer_closed(sock: ssl.SSLSocket) -> bool:
        """Whether the collector closed (or reset) the connection: it never sends data, so a readable socket holds
        an EOF, an alert or a TLS 1.3 session ticket, which the non-blocking read tells apart."""
        if not io_select.select([sock], [], [], 0)[0]:
            return False
        sock.setblocking(False)
        try:
            return sock.recv(4096) == b""
        except ssl.SSLWantReadError:
            return False  # only TLS records (a session ticket) were waiting
        except OSError:
            return True
        finally:
            sock.settimeout(10)

    def forward_once(self) -> int:
        """Send what is after the cursor (at most :data:`BATCH` records) and move the cursor.

        Returns
        -------
        int
            Records sent (replayed ones included); 0 when there was nothing to send or another router holds the
            forwarding lock (see :attr:`owner`).

        Raises
        ------
        OSError
            The collector is unreachable or the TLS handshake or send failed (``ssl.SSLError`` is one); the cursor
            has not moved.
        """
        if self._sock is not None and self._peer_closed(self._sock):
            self.close()
        if not self._own():
            return 0
        cursor = self.cursor()
        fresh = self._sock is None
        rows = chain.records(self.engine, after=max(0, cursor - REPLAY) if fresh else cursor, limit=BATCH)
        if not rows or rows[-1]["id"] <= cursor:
            return 0  # nothing new: a replay alone is not worth a connection
        try:
            if self._sock is None:
                self._sock = self._connect()
            self._sock.sendall(b"".join(atna.syslog_frame(r, source_id=self.cfg.audit_source_id) for r in rows))
        except OSError:
            self.close()
            self.release()  # another router may reach the collector
            raise
        self._advance(int(rows[-1]["id"]))
        return len(rows)

    def run(self, stop: threading.Event) -> None:
        """Forward until ``stop`` is set: drain, then poll; after a failure wait ``retrySeconds`` and reconnect."""
        failing = False
        while not stop.is_set():
            try:
                sent = self.forward_once()
            except (OSError, SQLAlchemyError) as exc:  # collector or store unreachable: both are retried
                if not failing:
                    log.warning("audit forwarding to syslog collector %s:%d failed (%s); records wait in the store, "
                                "retrying every %.1f s", self.cfg.host, self.cfg.port, exc, self.cfg.retry_seconds)
                failing = True
                stop.wait(self.cfg.retry_seconds)
                continue
            if failing:
                log.info("audit syslog collector %s:%d reachable again", self.cfg.host, self.cfg.port)
                failing = False
            if not self.owner:
                stop.wait(self.cfg.retry_seconds)  # standby: another router sends
            elif sent < BATCH:
                stop.wait(POLL_SECONDS)
        self.close()
        self.release()

    def start(self, stop: threading.Event) -> AuditForwarder:
        """Run :meth:`run` on a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.run, args=(stop,), name="pacsflow-audit-syslog", daemon=True)
        self._thread.start()
        return self


def start_forwarder(engine: Engine, cfg: AuditSyslog | None, stop: threading.Event) -> AuditForwarder | None:
    """The running forwarder for ``cfg`` (``audit.syslog``), or None when it is not configured."""
    return None if cfg is None else AuditForwarder(engine, cfg).start(stop)
