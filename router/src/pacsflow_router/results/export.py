"""The durable outbox: every result leaves the router through here, never lost and never duplicated.

``enqueue`` writes the SR file (fsync'ed, then renamed into place and the directory fsync'ed) and one SQLite row
(WAL, ``synchronous=FULL``) before it returns, so an SR that was enqueued survives kill -9 and power loss.
A background thread sends due items through one sender per destination (:class:`~.scu.StoreClient`, which keeps
one association open across items), and marks each delivered exactly once (a guarded UPDATE; the ``on_result``
hook runs only when that UPDATE changed the row).

Exactly once at the destination: an item is unique per (destination, SOP Instance UID), and the SR's UIDs are
derived from everything that determines its content (:func:`~.reports.sr_uids`), so re-running a study enqueues
nothing new. The one window left - the destination stored the SR and the router died before recording it - ends
in a resend of the same SOP Instance, which a PACS stores as the same object.

Retry policy: while a destination cannot be reached (connection refused, association rejected, no response) the
whole destination backs off exponentially (``base_delay`` doubling up to ``max_delay``) and is retried forever;
an item the destination refuses with a failure status backs off on its own, and after ``max_attempts`` refusals
of a status that resending cannot fix it is parked as ``failed`` (kept on disk, reported through ``on_result``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .. import metrics
from ..errors import ExportError

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    destination   TEXT NOT NULL,
    sop_uid       TEXT NOT NULL,
    file          TEXT NOT NULL,
    study_key     TEXT,
    use_case      TEXT,
    last_received REAL,
    enqueued_at   REAL NOT NULL,
    state         TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt  REAL NOT NULL,
    last_error    TEXT,
    status        INTEGER,
    delivered_at  REAL,
    UNIQUE (destination, sop_uid)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt);
"""


class Sender(Protocol):
    """What the outbox needs from a destination client (:class:`~.scu.StoreClient` is one)."""

    def send(self, ds: Dataset) -> int: ...


@dataclass(frozen=True)
class OutboxItem:
    """One SR on its way to one destination (what ``on_result`` receives; no patient data)."""

    id: int
    destination: str
    sop_uid: str
    study_key: str | None
    use_case: str | None
    last_received: float | None
    attempts: int
    last_error: str | None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Outbox:
    """Durable, retrying, exactly-once delivery of SRs to named destinations.

    Parameters
    ----------
    directory : Path
        Holds ``outbox.db`` and the SR files (``items/``); created if missing. Reopening the same directory
        resumes every pending item.
    senders : callable
        ``senders(destination_name)`` returns a sender (``send(ds) -> status``, optionally ``close()`` and
        ``release_if_idle()``); called once per destination and cached.
    on_result : callable, optional
        ``on_result(item, outcome)`` with outcome ``"delivered"``, ``"retrying"`` (first failed attempt of an
        item only, so a long outage does not flood the audit trail) or ``"failed"`` (parked).
    base_delay, max_delay : float
        Exponential backoff: first retry after ``base_delay`` seconds, doubling, capped at ``max_delay``.
    max_attempts : int
        Refusals (permanent failure statuses) before an item is parked as failed.
    poll_interval : float
        How often the background thread looks for due items when not woken by :meth:`enqueue`.
    """

    def __init__(
        self,
        directory: Path,
        senders: Callable[[str], Sender],
        *,
        on_result: Callable[[OutboxItem, str], None] | None = None,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        max_attempts: int = 5,
        poll_interval: float = 1.0,
    ) -> None:
        self.directory = Path(directory)
        self._files = self.directory / "items"
        self._files.mkdir(parents=True, exist_ok=True)
        self._senders_factory = senders
        self._senders: dict[str, Sender] = {}
        self.on_result = on_result
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_attempts = max_attempts
        self.poll_interval = poll_interval
        # destination -> (consecutive unreachable rounds, not before) - in memory: after a restart, try at once.
        self._backoff: dict[str, tuple[int, float]] = {}
        self._db_lock = threading.Lock()
        self._deliver_lock = threading.Lock()
        self._db = sqlite3.connect(self.directory / "outbox.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        metrics.OUTBOX_PENDING.set(self.pending())

    # -- enqueue -----------------------------------------------------------------------------------------------
    def _file_name(self, destination: str, sop_uid: str) -> str:
        # Derived from our own SR UID, but hashed anyway: file names never carry DICOM values (STYLE.md).
        return hashlib.sha256(f"{destination}\0{sop_uid}".encode()).hexdigest()[:40] + ".dcm"

    def enqueue(
        self,
        destination: str,
        ds: Dataset,
        *,
        study_key: str | None = None,
        use_case: str | None = None,
        last_received: float | None = None,
    ) -> bool:
        """Store ``ds`` durably for delivery to ``destination``.

        Parameters
        ----------
        destination : str
            Destination name (as in the routing config).
        ds : pydicom.Dataset
            The SR, with file meta information.
        study_key, use_case, last_received : optional
            Carried to ``on_result`` for the audit trail and the time-to-result metric.

        Returns
        -------
        bool
            True when queued now; False when this SOP Instance UID is already queued or delivered for this
            destination (nothing is written).
        """
        sop_uid = str(ds.SOPInstanceUID)
        with self._db_lock:
            row = self._db.execute("SELECT 1 FROM outbox WHERE destination = ? AND sop_uid = ?",
                                   (destination, sop_uid)).fetchone()
            if row is not None:
                return False
            name = self._file_name(destination, sop_uid)
            final = self._files / name
            tmp = self._files / (name + ".tmp")
            ds.save_as(tmp, enforce_file_format=True)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            _fsync_dir(self._files)
            now = time.time()
            self._db.execute(
                "INSERT INTO outbox (destination, sop_uid, file, study_key, use_case, last_received, enqueued_at,"
                " next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (destination, sop_uid, name, study_key, use_case, last_received, now, now),
            )
        metrics.OUTBOX_PENDING.inc()
        log.info("outbox: SR for study %s (%s) queued for %s", study_key or "-", use_case or "-", destination)
        self._wake.set()
        return True

    # -- queries -----------------------------------------------------------------------------------------------
    def pending(self) -> int:
        """Number of items not yet delivered (and not parked as failed)."""
        with self._db_lock:
            return cast(int, self._db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()[0])

    def state(self, sop_uid: str, destination: str | None = None) -> str | None:
        """``pending``, ``delivered`` or ``failed`` for one SR (None when never enqueued)."""
        query = "SELECT state FROM outbox WHERE sop_uid = ?" + (" AND destination = ?" if destination else "")
        with self._db_lock:
            row = self._db.execute(query, (sop_uid, destination) if destination else (sop_uid,)).fetchone()
        return row[0] if row else None

    def counts(self) -> dict[str, int]:
        """Items per state, e.g. ``{"pending": 2, "delivered": 10}``."""
        with self._db_lock:
            return dict(self._db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())

    # -- delivery ----------------------------------------------------------------------------------------------
    def _delay(self, failures: int) -> float:
        # int ** int is typed Any (a negative exponent gives a float); here the exponent is >= 0.
        return min(self.max_delay, self.base_delay * cast(int, 2 ** max(0, failures - 1)))

    def _sender(self, destination: str) -> Sender:
        sender = self._senders.get(destination)
        if sender is None:
            sender = self._senders[destination] = self._senders_factory(destination)
        return sender

    def _notify(self, item: OutboxItem, outcome: str) -> None:
        metrics.SR_EXPORTS.labels(item.destination, outcome).inc()
        if self.on_result is not None:
            try:
                self.on_result(item, outcome)
            except Exception:  # noqa: BLE001 - a broken hook must not stop deliveries; the outbox row is the truth
                log.exception("outbox: on_result hook failed for an item to %s", item.destination)

    def _due(self, now: float) -> list[OutboxItem]:
        with self._db_lock:
            rows = self._db.execute(
                "SELECT id, destination, sop_uid, study_key, use_case, last_received, attempts, last_error"
                " FROM outbox WHERE state = 'pending' AND next_attempt <= ? ORDER BY id", (now,)).fetchall()
        return [OutboxItem(*row) for row in rows]

    def _record(self, sql: str, params: tuple[object, ...]) -> int:
        with self._db_lock:
            return self._db.execute(sql, params).rowcount

    def deliver_due(self, now: float | None = None) -> int:
        """Send every item that is due; returns how many were delivered in this call.

        Items of a destination that cannot be reached stay pending; the destination is retried after its
        backoff. Safe to call from any thread (calls are serialised).
        """
        delivered = 0
        with self._deliver_lock:
            now = time.time() if now is None else now
            for item in self._due(now):
                failures, not_before = self._backoff.get(item.destination, (0, 0.0))
                if now < not_before:
                    continue
                try:
                    ds = pydicom.dcmread(self._files / self._file_for(item.id))
                except (OSError, InvalidDicomError) as exc:
                    self._park(item, f"stored SR file unreadable: {exc}")
                    continue
                try:
                    sender = self._sender(item.destination)
                except Exception as exc:  # noqa: BLE001 - the factory is the caller's code (config lookup)
                    # No client for this destination now (e.g. removed by a config reload): keep the item, back off.
                    self._backoff[item.destination] = (failures + 1, now + self._delay(failures + 1))
                    log.error("outbox: no sender for destination %s (%s: %s); items stay queued",
                              item.destination, type(exc).__name__, exc)
                    continue
                try:
                    status = sender.send(ds)
                except ExportError as exc:
                    message = str(exc)
                    attempts = item.attempts + 1
                    if getattr(exc, "permanent", False):
                        if attempts >= self.max_attempts:
                            self._park(item, message, attempts=attempts)
                            continue
                        self._record("UPDATE outbox SET attempts = ?, last_error = ?, next_attempt = ? WHERE id = ?",
                                     (attempts, message, now + self._delay(attempts), item.id))
                    else:
                        # The destination itself is down: back off the destination, not just this item.
                        self._backoff[item.destination] = (failures + 1, now + self._delay(failures + 1))
                        self._record("UPDATE outbox SET attempts = ?, last_error = ? WHERE id = ?",
                                     (attempts, message, item.id))
                    log.warning("outbox: delivery to %s failed (attempt %d): %s", item.destination, attempts, message)
                    if item.attempts == 0:
                        self._notify(_with(item, attempts, message), "retrying")
                    else:
                        metrics.SR_EXPORTS.labels(item.destination, "retrying").inc()
                    continue
                self._backoff.pop(item.destination, None)
                changed = self._record(
                    "UPDATE outbox SET state = 'delivered', status = ?, delivered_at = ?, attempts = attempts + 1"
                    " WHERE id = ? AND state = 'pending'", (status, time.time(), item.id))
                if changed == 1:
                    delivered += 1
                    metrics.OUTBOX_PENDING.dec()
                    log.info("outbox: SR for study %s (%s) delivered to %s", item.study_key or "-",
                             item.use_case or "-", item.destination)
                    self._notify(_with(item, item.attempts + 1, None), "delivered")
        return delivered

    def _file_for(self, item_id: int) -> str:
        with self._db_lock:
            return cast(str, self._db.execute("SELECT file FROM outbox WHERE id = ?", (item_id,)).fetchone()[0])

    def _park(self, item: OutboxItem, message: str, *, attempts: int | None = None) -> None:
        attempts = item.attempts + 1 if attempts is None else attempts
        changed = self._record(
            "UPDATE outbox SET state = 'failed', attempts = ?, last_error = ? WHERE id = ? AND state = 'pending'",
            (attempts, message, item.id))
        if changed == 1:
            metrics.OUTBOX_PENDING.dec()
            log.error("outbox: SR for study %s to %s parked as failed: %s", item.study_key or "-",
                      item.destination, message)
            self._notify(_with(item, attempts, message), "failed")

    def next_due(self) -> float | None:
        """Wall-clock time the next pending item becomes due (None when nothing is pending)."""
        with self._db_lock:
            rows = self._db.execute(
                "SELECT destination, MIN(next_attempt) FROM outbox WHERE state = 'pending' GROUP BY destination"
            ).fetchall()
        times = [max(t, self._backoff.get(dest, (0, 0.0))[1]) for dest, t in rows]
        return min(times) if times else None

    def reset_senders(self) -> None:
        """Close and forget the cached senders; the next delivery asks ``senders`` again.

        Call after the destinations changed (config reload) so new host/port/AE title values take effect.
        """
        with self._deliver_lock:
            for sender in self._senders.values():
                close = getattr(sender, "close", None)
                if close is not None:
                    close()
            self._senders.clear()
            self._backoff.clear()

    # -- background thread -------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()
                for sender in list(self._senders.values()):
                    release = getattr(sender, "release_if_idle", None)
                    if release is not None:
                        release()
            except Exception:  # noqa: BLE001 - the sender thread must survive anything; items stay pending
                log.exception("outbox: delivery round failed; retrying")
            due = self.next_due()
            wait = self.poll_interval if due is None else min(self.poll_interval, max(0.0, due - time.time()))
            self._wake.wait(wait)
            self._wake.clear()

    def start(self) -> None:
        """Start the background sender thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pacsflow-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the sender thread, release open associations and close the database."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.reset_senders()

    def close(self) -> None:
        """Stop and close the database (the object is unusable afterwards)."""
        self.stop()
        with self._db_lock:
            self._db.close()


def _with(item: OutboxItem, attempts: int, error: str | None) -> OutboxItem:
    return OutboxItem(item.id, item.destination, item.sop_uid, item.study_key, item.use_case, item.last_received,
                      attempts, error)
