"""Several routers on one PostgreSQL results store forward the shared audit chain to one syslog collector (Debian
rsyslog + rsyslog-gnutls): one forwarder at a time (a PostgreSQL advisory lock), so each record arrives once; when the
owner stops, a standby takes over and sends what followed, at most :data:`REPLAY` records again."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
from lxml import etree
from sqlalchemy import text
from sqlalchemy.engine import Engine

from pacsflow_router.config import AuditSyslog, TlsClient
from pacsflow_router.results import chain
from pacsflow_router.results.audit import AuditLog
from pacsflow_router.results.auditforward import LOCK_KEY, REPLAY, AuditForwarder
from tests.peers.certs import Pki
from tests.peers.net import eventually
from tests.peers.postgres import fresh_database, postgres_server  # noqa: F401  (fixture)
from tests.peers.rsyslog import Collector


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


@pytest.fixture
def collector(pki):
    peer = Collector(pki.server()).start()
    yield peer
    peer.cleanup()


def _received(collector: Collector) -> list[tuple[int, str]]:
    """(chain record id, AuditSourceID) of every message that arrived, duplicates included."""
    out = []
    for message in collector.messages():
        doc = etree.fromstring(message.encode())
        [rid] = [o.get("ParticipantObjectID") for o in doc.iter("ParticipantObjectIdentification")
                 if o.get("ParticipantObjectID", "").startswith("audit-chain:")]
        out.append((int(rid.split(":")[1]), doc.find("AuditSourceIdentification").get("AuditSourceID")))
    return out


def _counts(collector: Collector) -> Counter[int]:
    """How many times each chain record id arrived."""
    return Counter(rid for rid, _ in _received(collector))


def _lock_holders(engine: Engine) -> list[int]:
    """Backend PIDs of the sessions that hold the forwarding lock, as the server sees them."""
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                                      "classid = :k1 AND objid = :k2"), {"k1": LOCK_KEY[0], "k2": LOCK_KEY[1]})
                    .scalars())


def _write(engine: Engine, first: int, n: int) -> None:
    for k in range(first, first + n):
        chain.record(engine, "login", actor=f"pk_router_{k}")


def test_routers_sharing_a_store_send_each_record_once_and_hand_over(postgres_server, pki, collector,  # noqa: F811
                                                                     caplog):
    url = fresh_database(postgres_server)
    engine = AuditLog(url).engine
    cfg = AuditSyslog(host="127.0.0.1", port=collector.port, tls=TlsClient(ca_file=str(pki.ca_file)),
                      retry_seconds=0.2)
    routers = [AuditForwarder(AuditLog(url).engine, cfg.model_copy(update={"audit_source_id": f"router-{n}"}))
               for n in range(3)]
    stops = [threading.Event() for _ in routers]
    for forwarder, stop in zip(routers, stops, strict=True):
        forwarder.start(stop)
    try:
        _write(engine, 0, 20)  # written before and while every router polls
        eventually(lambda: set(_counts(collector)) >= set(range(1, 21)), "records 1-20 at the collector", timeout=30)
        _write(engine, 20, 10)
        eventually(lambda: set(_counts(collector)) >= set(range(1, 31)), "records 21-30 at the collector", timeout=30)
        stops[0].wait(2.0)  # four more polls of every router: nothing may arrive twice
        counts = _counts(collector)
        assert sorted(counts) == list(range(1, 31))
        assert [i for i, n in counts.items() if n > 1] == []  # was: every router sent every record
        [owner] = [n for n, f in enumerate(routers) if f.owner]
        assert len(_lock_holders(engine)) == 1
        assert {source for _, source in _received(collector)} == {f"router-{owner}"}

        stops[owner].set()  # the owner stops (its lock is released): a standby takes over
        eventually(lambda: not routers[owner].owner, "the stopped router gave up the lock", timeout=10)
        _write(engine, 30, 5)
        eventually(lambda: set(_counts(collector)) >= set(range(1, 36)), "records 31-35 after the handover",
                   timeout=30)
        assert [n for n, f in enumerate(routers) if f.owner] != [owner]
        again = [i for i, n in _counts(collector).items() if n > 1]
        # At least once: the new owner's first connection replays at most REPLAY records before the cursor.
        assert all(30 - REPLAY < i <= 30 for i in again) and max(_counts(collector).values()) <= 2

        # The owner's database session is killed (a failover, a network cut): the server frees the lock, the owner
        # notices before its next send, and exactly one router owns and forwards again.
        [holder] = _lock_holders(engine)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": holder}).scalar()
        _write(engine, 35, 5)
        eventually(lambda: set(_counts(collector)) >= set(range(1, 41)), "records 36-40 after the lost session",
                   timeout=30)
        eventually(lambda: len(h := _lock_holders(engine)) == 1 and h[0] != holder, "one new lock holder", timeout=10)
        # The killed owner believes it holds the lock until its next round, which finds the session gone.
        eventually(lambda: len([f for f in routers if f.owner]) == 1, "one router believes it owns", timeout=10)
        assert "lost its database session" in caplog.text
    finally:
        for stop in stops:
            stop.set()
