"""Forwards the audit chain to a syslog collector (``audit.syslog``) as DICOM audit messages over TLS.

A durable cursor (``audit_forward``, row ``syslog``: the last chain id sent) makes forwarding survive a collector
that is down and a router restart: records are read from the store after the cursor, sent as octet-counted RFC 5424
messages (:mod:`.atna`) over one TLS connection (:func:`pacsflow_router.tls.client_context`: BCP 195, the collector's
certificate verified), and the cursor moves only after the send returned. While the collector is unreachable
nothing moves and the next try comes ``retrySeconds`` later.

Syslog over TLS has no application acknowledgement (RFC 5425), so bytes the kernel accepted just before the
collector died can be lost in flight; on every new connection the forwarder therefore sends again the last
:data:`REPLAY` records before the cursor. Delivery is at least once: a collector deduplicates by the chain record
id (``ParticipantObjectID`` ``audit-chain:<id>``), the same id two routers on one database may both send.
"""

from __future__ import annotations

import datetime as dt
import logging
import select as io_select
import socket
import ssl
import threading

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine
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
            Records sent (replayed ones included); 0 when there was nothing to send.

        Raises
        ------
        OSError
            The collector is unreachable or the TLS handshake or send failed (``ssl.SSLError`` is one); the cursor
            has not moved.
        """
        if self._sock is not None and self._peer_closed(self._sock):
            self.close()
        cursor = self.cursor()
        fresh = self._sock is None
        rows = chain.records(self.engine, after=max(0, cursor - REPLAY) if fresh else cursor, limit=BATCH)
        if not rows or rows[-1]["id"] <= cursor:
            return 0  # nothing new: a replay alone is not worth a connection
        if self._sock is None:
            self._sock = self._connect()
        try:
            self._sock.sendall(b"".join(atna.syslog_frame(r, source_id=self.cfg.audit_source_id) for r in rows))
        except OSError:
            self.close()
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
            if sent < BATCH:
                stop.wait(POLL_SECONDS)
        self.close()

    def start(self, stop: threading.Event) -> AuditForwarder:
        """Run :meth:`run` on a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.run, args=(stop,), name="pacsflow-audit-syslog", daemon=True)
        self._thread.start()
        return self


def start_forwarder(engine: Engine, cfg: AuditSyslog | None, stop: threading.Event) -> AuditForwarder | None:
    """The running forwarder for ``cfg`` (``audit.syslog``), or None when it is not configured."""
    return None if cfg is None else AuditForwarder(engine, cfg).start(stop)
