"""The durable outbox: every result leaves the router through here, never lost and never duplicated.

Three channels go through the same outbox: ``dicom`` (SRs by C-STORE), ``hl7`` (HL7 v2 order updates and alerts
over MLLP) and ``webhook`` (signed JSON alerts). Destinations are named per channel (the routing config's
``destinations``, ``hl7Destinations``, ``webhooks``).

``enqueue`` (an SR) and ``enqueue_message`` (HL7/webhook bytes) write the payload file (fsync'ed, then renamed into
place and the directory fsync'ed) and one SQLite row (WAL, ``synchronous=FULL``) before they return, so an item that
was enqueued survives kill -9 and power loss. A background thread sends due items through one sender per
(channel, destination) (:class:`~.scu.StoreClient` keeps one association open across items;
``workflow.senders`` has the MLLP and webhook senders), and marks each delivered exactly once (a guarded UPDATE; the
``on_result`` hook runs only when that UPDATE changed the row).

Exactly once at the destination: an item is unique per (channel, destination, idempotency key). The key is the SR's
SOP Instance UID, the HL7 message's MSH-10 or the webhook's ``Idempotency-Key``, each derived from what determines
the content (:func:`~.reports.sr_uids`, ``workflow.alerts``), so re-running a study enqueues nothing new. The one
window left - the destination took the item and the router died before recording it - ends in a resend with the
same key: a PACS stores the same SOP Instance as the same object, an HL7 receiver sees the same MSH-10 again, a
webhook receiver the same ``Idempotency-Key``.

Retry policy: while a destination cannot be reached (connection refused, association rejected, no response) the
whole destination backs off exponentially (``base_delay`` doubling up to ``max_delay``) and is retried forever;
an item the destination refuses with a failure status backs off on its own, and after ``max_attempts`` refusals
of a status that resending cannot fix it is parked as ``failed`` (kept on disk, reported through ``on_result``).
HL7 AE/AR and webhook 4xx answers are such refusals: recorded, backed off, parked - never resent in a tight loop.

An ``outbox.db`` written before the channels existed is migrated once at open (one transaction: its rows become
``dicom`` items, the SOP Instance UID their key), because SQLite cannot change a table's UNIQUE constraint in place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .. import metrics
from ..durable import fsync_dir
from ..errors import ExportError

log = logging.getLogger(__name__)

#: The outbox's channels (``metrics.OUTBOUND_CHANNELS``).
CHANNELS = ("dicom", "hl7", "webhook")

_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    channel         TEXT NOT NULL DEFAULT 'dicom',
    destination     TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    kind            TEXT,
    file            TEXT NOT NULL,
    study_key       TEXT,
    use_case        TEXT,
    last_received   REAL,
    enqueued_at     REAL NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt    REAL NOT NULL,
    last_error      TEXT,
    status          INTEGER,
    delivered_at    REAL,
    UNIQUE (channel, destination, idempotency_key)
)"""
_INDEX = "CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt)"
# Columns an outbox.db from before the channels has, copied as they are by the migration.
_V1_COLUMNS = ("id, destination, file, study_key, use_case, last_received, enqueued_at, state, attempts, next_attempt,"
               " last_error, status, delivered_at")


class Sender(Protocol):
    """What the outbox needs from a DICOM destination client (:class:`~.scu.StoreClient` is one)."""

    def send(self, ds: Dataset) -> int: ...


@dataclass(frozen=True)
class Message:
    """An HL7 or webhook payload as the outbox stored it, with its idempotency key (MSH-10 / ``Idempotency-Key``)."""

    key: str
    body: bytes
    kind: str | None = None


@dataclass(frozen=True)
class Outgoing:
    """An HL7 message or webhook body to queue (:meth:`Outbox.enqueue_messages`), with what ``on_result`` gets."""

    channel: str
    destination: str
    key: str
    """Idempotency key (MSH-10 / ``Idempotency-Key``), derived from the content's origin."""
    body: bytes
    kind: str | None = None
    study_key: str | None = None
    use_case: str | None = None
    last_received: float | None = None


def _writer(body: bytes) -> Callable[[Path], object]:
    return lambda path: path.write_bytes(body)


class MessageSender(Protocol):
    """What the outbox needs from an HL7 or webhook client (``workflow.senders``): ``send`` returns a status (the
    HTTP status; 0 for an HL7 AA/CA) or raises :class:`~.errors.ExportError` (``permanent`` for a refusal)."""

    def send(self, message: Message) -> int: ...


@dataclass(frozen=True)
class OutboxItem:
    """One item on its way to one destination (what ``on_result`` receives; no patient data)."""

    id: int
    destination: str
    key: str
    """Idempotency key: the SR's SOP Instance UID, the HL7 MSH-10, or the webhook's idempotency key."""
    study_key: str | None
    use_case: str | None
    last_received: float | None
    attempts: int
    last_error: str | None
    channel: str = "dicom"
    kind: str | None = None
    """``sr``, or the HL7/webhook message kind (``order-update``, ``alert``, ``webhook``)."""

    @property
    def sop_uid(self) -> str:
        """The SR's SOP Instance UID (the key of a ``dicom`` item)."""
        return self.key


class Outbox:
    """Durable, retrying, exactly-once delivery of SRs, HL7 messages and webhooks to named destinations.

    Parameters
    ----------
    directory : Path
        Holds ``outbox.db`` and the SR files (``items/``); created if missing. Reopening the same directory
        resumes every pending item.
    senders : callable
        ``senders(destination_name)`` returns a DICOM sender (``send(ds) -> status``, optionally ``close()`` and
        ``release_if_idle()``); called once per destination and cached.
    message_senders : callable, optional
        ``message_senders(channel, destination_name)`` returns the sender of an ``hl7`` or ``webhook`` destination
        (``send(message) -> status``, the same optional methods); called once per (channel, destination) and cached.
        Without it such items stay queued (and an error is logged).
    on_result : callable, optional
        ``on_result(item, outcome)`` with outcome ``"delivered"``, ``"retrying"`` (first failed attempt of an
        item only, so a long outage does not flood the audit trail), ``"failed"`` (parked) or ``"held"``.
    hold : callable, optional
        ``hold(item)`` returns why a due item must not be sent now (say, its use case was demoted to silent), else
        None. A held item is never sent: it is parked (state ``failed``, ``last_error`` starting ``held:``) and
        reported once as ``"held"``. Promoting the use case again does not release it: those outputs came from the
        model that was just judged unsafe; the study can be re-run instead.
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
        message_senders: Callable[[str, str], MessageSender] | None = None,
        on_result: Callable[[OutboxItem, str], None] | None = None,
        hold: Callable[[OutboxItem], str | None] | None = None,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        max_attempts: int = 5,
        poll_interval: float = 1.0,
    ) -> None:
        self.directory = Path(directory)
        self._files = self.directory / "items"
        self._files.mkdir(parents=True, exist_ok=True)
        self._senders_factory = senders
        self._message_senders_factory = message_senders
        self._senders: dict[tuple[str, str], Sender | MessageSender] = {}
        self.on_result = on_result
        self.hold = hold
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.max_attempts = max_attempts
        self.poll_interval = poll_interval
        # (channel, destination) -> (consecutive unreachable rounds, not before) - in memory: after a restart, try
        # at once.
        self._backoff: dict[tuple[str, str], tuple[int, float]] = {}
        self._db_lock = threading.Lock()
        self._deliver_lock = threading.Lock()
        self._db = sqlite3.connect(self.directory / "outbox.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()
        self._db.execute(_TABLE.format(name="outbox"))
        self._db.execute(_INDEX)
        self._wake = threading.Event()
        self._prepare: set[str] = set()  # DICOM destinations to connect to ahead of an SR (prepare)
        self._progress = threading.Condition()  # notified after each delivery and each round (wait_sent)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.update_gauges()

    def _migrate(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if not columns or "channel" in columns:
            return
        # One transaction: a crash leaves either the old table or the new one, never both or neither.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(_TABLE.format(name="outbox_channels"))
            self._db.execute(f"INSERT INTO outbox_channels (channel, idempotency_key, kind, {_V1_COLUMNS})"
                             f" SELECT 'dicom', sop_uid, 'sr', {_V1_COLUMNS} FROM outbox")
            self._db.execute("DROP TABLE outbox")
            self._db.execute("ALTER TABLE outbox_channels RENAME TO outbox")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        log.info("outbox: migrated %s to per-channel items", self.directory)

    # -- enqueue -----------------------------------------------------------------------------------------------
    def _file_name(self, channel: str, destination: str, key: str) -> str:
        # Derived from our own keys, but hashed anyway: file names never carry DICOM or HL7 values (STYLE.md).
        if channel == "dicom":
            return hashlib.sha256(f"{destination}\0{key}".encode()).hexdigest()[:40] + ".dcm"
        return hashlib.sha256(f"{channel}\0{destination}\0{key}".encode()).hexdigest()[:40] + ".msg"

    def _write(self, channel: str, destination: str, key: str, write: Callable[[Path], object]) -> str:
        # The payload file, fsync'ed and renamed into place (the directory is fsync'ed by the caller).
        name = self._file_name(channel, destination, key)
        tmp = self._files / (name + ".tmp")
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self._files / name)
        return name

    def _store_many(self, items: Sequence[tuple[str, str, str, Callable[[Path], object], Outgoing]], *,
                    before_commit: Callable[[], object] | None = None) -> list[bool]:
        """Store items durably: every new item's file, one directory fsync, then one transaction with every row.

        Each ``(channel, destination, key, write, outgoing)``; returns, per item, whether it was new. A crash before
        the commit leaves files without rows (rewritten by a repeat, never sent); after it, every item is queued.
        ``before_commit`` runs after the files are durable and before the rows are written, when any item is new;
        what it raises propagates and nothing is queued.
        """
        for channel, *_ in items:
            if channel not in CHANNELS:
                raise ValueError(f"unknown outbox channel {channel!r}; one of {CHANNELS}")
        with self._db_lock:
            seen: set[tuple[str, str, str]] = set()
            new: list[bool] = []
            for channel, destination, key, _write, _item in items:
                row = self._db.execute(
                    "SELECT 1 FROM outbox WHERE channel = ? AND destination = ? AND idempotency_key = ?",
                    (channel, destination, key)).fetchone()
                new.append(row is None and (channel, destination, key) not in seen)
                seen.add((channel, destination, key))
            if not any(new):
                return new
            names = [self._write(channel, destination, key, write) if is_new else ""
                     for (channel, destination, key, write, _item), is_new in zip(items, new, strict=True)]
            fsync_dir(self._files)
            if before_commit is not None:
                before_commit()
            now = time.time()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for (channel, destination, key, _write, item), name, is_new in zip(items, names, new, strict=True):
                    if is_new:
                        self._db.execute(
                            "INSERT INTO outbox (channel, destination, idempotency_key, kind, file, study_key,"
                            " use_case, last_received, enqueued_at, next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (channel, destination, key, item.kind, name, item.study_key, item.use_case,
                             item.last_received, now, now))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self.update_gauges()
        for (channel, destination, _key, _write, item), is_new in zip(items, new, strict=True):
            if is_new:
                log.info("outbox: %s for study %s (%s) queued for %s %s", item.kind or channel,
                         item.study_key or "-", item.use_case or "-", channel, destination)
        self._wake.set()
        return new

    def _store(self, channel: str, destination: str, key: str, write: Callable[[Path], object], *, kind: str | None,
               study_key: str | None, use_case: str | None, last_received: float | None,
               before_commit: Callable[[], object] | None = None) -> bool:
        item = Outgoing(channel, destination, key, b"", kind=kind, study_key=study_key, use_case=use_case,
                        last_received=last_received)
        return self._store_many([(channel, destination, key, write, item)], before_commit=before_commit)[0]

    def enqueue(
        self,
        destination: str,
        ds: Dataset,
        *,
        study_key: str | None = None,
        use_case: str | None = None,
        last_received: float | None = None,
        before_commit: Callable[[], object] | None = None,
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
        before_commit : callable, optional
            Runs once the SR's file is durable and before its row is written (the pipeline waits there for the
            result's audit record, written meanwhile, so that no SR leaves without one); what it raises propagates
            and the SR is not queued. Not called when nothing is new.

        Returns
        -------
        bool
            True when queued now; False when this SOP Instance UID is already queued or delivered for this
            destination (nothing is written).
        """
        return self._store("dicom", destination, str(ds.SOPInstanceUID),
                           lambda path: ds.save_as(path, enforce_file_format=True), kind="sr", study_key=study_key,
                           use_case=use_case, last_received=last_received, before_commit=before_commit)

    def enqueue_message(
        self,
        channel: str,
        destination: str,
        key: str,
        body: bytes,
        *,
        kind: str | None = None,
        study_key: str | None = None,
        use_case: str | None = None,
        last_received: float | None = None,
    ) -> bool:
        """Store an HL7 message or webhook body durably for delivery to ``destination`` of ``channel``.

        Parameters
        ----------
        channel : str
            ``hl7`` or ``webhook``.
        destination : str
            Name of the channel's destination (``hl7Destinations`` / ``webhooks``).
        key : str
            Idempotency key (MSH-10 / ``Idempotency-Key``), derived from the content's origin so that a repeat is
            the same item.
        body : bytes
            The payload, sent as stored.
        kind, study_key, use_case, last_received : optional
            Carried to the sender (``kind``) and to ``on_result``.

        Returns
        -------
        bool
            True when queued now; False when this key is already queued or delivered there (nothing is written).
        """
        if channel == "dicom":
            raise ValueError("DICOM items are data sets: use enqueue()")
        return self._store(channel, destination, key, lambda path: path.write_bytes(body), kind=kind,
                           study_key=study_key, use_case=use_case, last_received=last_received)

    def enqueue_messages(self, messages: Sequence[Outgoing]) -> list[bool]:
        """Store several HL7 messages and webhook bodies durably at once: one directory fsync and one transaction.

        What :meth:`enqueue_message` does for each, with one commit instead of one per message, so a critical
        result's alerts are queued in the time of one and the sender thread, woken once, finds them all.

        Parameters
        ----------
        messages : sequence of Outgoing
            The messages (``hl7`` or ``webhook`` channel each).

        Returns
        -------
        list of bool
            Per message, True when queued now; False when its key was already queued or delivered there.
        """
        for m in messages:
            if m.channel == "dicom":
                raise ValueError("DICOM items are data sets: use enqueue()")
        return self._store_many([(m.channel, m.destination, m.key, _writer(m.body), m) for m in messages])

    # -- queries -----------------------------------------------------------------------------------------------
    def pending(self, channel: str | None = None) -> int:
        """Number of items (of ``channel``, else of all) not yet delivered (and not parked as failed)."""
        query = "SELECT COUNT(*) FROM outbox WHERE state = 'pending'" + (" AND channel = ?" if channel else "")
        with self._db_lock:
            return cast(int, self._db.execute(query, (channel,) if channel else ()).fetchone()[0])

    def state(self, key: str, destination: str | None = None, *, channel: str = "dicom") -> str | None:
        """``pending``, ``delivered`` or ``failed`` for one item by its key (an SR's SOP Instance UID by default;
        None when never enqueued)."""
        query = "SELECT state FROM outbox WHERE channel = ? AND idempotency_key = ?"
        params: tuple[str, ...] = (channel, key)
        if destination:
            query += " AND destination = ?"
            params += (destination,)
        with self._db_lock:
            row = self._db.execute(query, params).fetchone()
        return row[0] if row else None

    def counts(self, channel: str | None = None) -> dict[str, int]:
        """Items per state (of ``channel``, else of all), e.g. ``{"pending": 2, "delivered": 10}``."""
        query = "SELECT state, COUNT(*) FROM outbox" + (" WHERE channel = ?" if channel else "") + " GROUP BY state"
        with self._db_lock:
            return dict(self._db.execute(query, (channel,) if channel else ()).fetchall())

    def update_gauges(self, now: float | None = None) -> None:
        """Set the pending and oldest-pending-age gauges per channel from the database (the sender thread calls it
        every round, so the age grows while a destination is down)."""
        now = time.time() if now is None else now
        with self._db_lock:
            rows = self._db.execute("SELECT channel, COUNT(*), MIN(enqueued_at) FROM outbox WHERE state = 'pending'"
                                    " GROUP BY channel").fetchall()
        found = {channel: (count, oldest) for channel, count, oldest in rows}
        for channel in CHANNELS:
            count, oldest = found.get(channel, (0, None))
            metrics.OUTBOUND_PENDING.labels(channel).set(count)
            metrics.OUTBOUND_OLDEST_PENDING_AGE.labels(channel).set(max(0.0, now - oldest) if oldest else 0.0)
        metrics.OUTBOX_PENDING.set(found.get("dicom", (0, None))[0])  # SRs only, as the dashboards read it

    # -- delivery ----------------------------------------------------------------------------------------------
    def _delay(self, failures: int) -> float:
        # int ** int is typed Any (a negative exponent gives a float); here the exponent is >= 0.
        return min(self.max_delay, self.base_delay * cast(int, 2 ** max(0, failures - 1)))

    def _sender(self, channel: str, destination: str) -> Sender | MessageSender:
        sender = self._senders.get((channel, destination))
        if sender is None:
            if channel == "dicom":
                sender = self._senders_factory(destination)
            elif self._message_senders_factory is None:
                raise LookupError(f"the outbox has no sender factory for {channel} items")
            else:
                sender = self._message_senders_factory(channel, destination)
            self._senders[(channel, destination)] = sender
        return sender

    def _load(self, item: OutboxItem) -> Dataset | Message:
        path = self._files / self._file_for(item.id)
        if item.channel == "dicom":
            # Read back rather than kept in memory since the enqueue: a data set read from its file keeps its elements
            # encoded, and pynetdicom writes them as they are (an SR: dcmread + send 14 ms, the built data set 33 ms).
            return pydicom.dcmread(path)
        return Message(item.key, path.read_bytes(), item.kind)

    @staticmethod
    def _count(item: OutboxItem, outcome: str) -> None:
        if item.channel == "dicom":
            metrics.SR_EXPORTS.labels(item.destination, outcome).inc()
        metrics.OUTBOUND_MESSAGES.labels(item.channel, item.destination,
                                         "sent" if outcome == "delivered" else outcome).inc()

    def _notify(self, item: OutboxItem, outcome: str) -> None:
        self._count(item, outcome)
        if self.on_result is not None:
            try:
                self.on_result(item, outcome)
            except Exception:  # noqa: BLE001 - a broken hook must not stop deliveries; the outbox row is the truth
                log.exception("outbox: on_result hook failed for an item to %s", item.destination)

    def _due(self, now: float) -> list[OutboxItem]:
        with self._db_lock:
            rows = self._db.execute(
                "SELECT id, destination, idempotency_key, study_key, use_case, last_received, attempts, last_error,"
                " channel, kind FROM outbox WHERE state = 'pending' AND next_attempt <= ? ORDER BY id",
                (now,)).fetchall()
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
                where = (item.channel, item.destination)
                failures, not_before = self._backoff.get(where, (0, 0.0))
                if now < not_before:
                    continue
                held = self.hold(item) if self.hold is not None else None
                if held is not None:
                    self._park(item, held, attempts=item.attempts, outcome="held")
                    continue
                try:
                    payload = self._load(item)
                except (OSError, InvalidDicomError) as exc:
                    self._park(item, f"stored {item.kind or item.channel} file unreadable: {exc}")
                    continue
                try:
                    sender = self._sender(*where)
                except Exception as exc:  # noqa: BLE001 - the factory is the caller's code (config lookup)
                    # No client for this destination now (e.g. removed by a config reload): keep the item, back off.
                    self._backoff[where] = (failures + 1, now + self._delay(failures + 1))
                    log.error("outbox: no sender for %s destination %s (%s: %s); items stay queued",
                              item.channel, item.destination, type(exc).__name__, exc)
                    continue
                try:
                    # The factories pair channels and senders: a Dataset goes to a DICOM sender, a Message to the rest.
                    status = sender.send(payload)  # type: ignore[arg-type]
                except ExportError as exc:
                    message = str(exc)
                    attempts = item.attempts + 1
                    if getattr(exc, "permanent", False):
                        if attempts >= self.max_attempts or getattr(exc, "final", False):
                            self._park(item, message, attempts=attempts)
                            continue
                        self._record("UPDATE outbox SET attempts = ?, last_error = ?, next_attempt = ? WHERE id = ?",
                                     (attempts, message, now + self._delay(attempts), item.id))
                    else:
                        # The destination itself is down: back off the destination, not just this item.
                        self._backoff[where] = (failures + 1, now + self._delay(failures + 1))
                        self._record("UPDATE outbox SET attempts = ?, last_error = ? WHERE id = ?",
                                     (attempts, message, item.id))
                    log.warning("outbox: delivery to %s %s failed (attempt %d): %s", item.channel, item.destination,
                                attempts, message)
                    if item.attempts == 0:
                        self._notify(_with(item, attempts, message), "retrying")
                    else:
                        self._count(item, "retrying")
                    continue
                self._backoff.pop(where, None)
                changed = self._record(
                    "UPDATE outbox SET state = 'delivered', status = ?, delivered_at = ?, attempts = attempts + 1"
                    " WHERE id = ? AND state = 'pending'", (status, time.time(), item.id))
                if changed == 1:
                    delivered += 1
                    log.info("outbox: %s for study %s (%s) delivered to %s %s", item.kind or item.channel,
                             item.study_key or "-", item.use_case or "-", item.channel, item.destination)
                    self._notify(_with(item, item.attempts + 1, None), "delivered")
                    with self._progress:
                        self._progress.notify_all()
        # Every round, delivered or not: the oldest-pending age grows while a destination is down.
        self.update_gauges(now)
        with self._progress:
            self._progress.notify_all()
        return delivered

    def wait_sent(self, channels: tuple[str, ...], timeout: float) -> bool:
        """Block until nothing of ``channels`` is pending, at most ``timeout`` seconds; True when nothing is.

        The pipeline calls it after queueing a critical result's alerts, before the CPU-bound SR build: the sender
        thread then gets the interpreter to itself for the few milliseconds an ACK takes, instead of waiting for the
        GIL behind the SR (bench/worklist.py). A receiver that is down costs each critical study ``timeout`` at most.
        """
        if self._thread is None:
            return not any(self.pending(channel) for channel in channels)  # no sender thread: nothing would change
        deadline = time.monotonic() + timeout
        with self._progress:
            while any(self.pending(channel) for channel in channels):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._progress.wait(left)
        return True

    def _file_for(self, item_id: int) -> str:
        with self._db_lock:
            return cast(str, self._db.execute("SELECT file FROM outbox WHERE id = ?", (item_id,)).fetchone()[0])

    def _park(self, item: OutboxItem, message: str, *, attempts: int | None = None, outcome: str = "failed") -> None:
        attempts = item.attempts + 1 if attempts is None else attempts
        # last_error says why it was parked; a held item's starts "held: " (state stays 'failed': parked, not sent).
        stored = message if outcome == "failed" else f"{outcome}: {message}"
        changed = self._record(
            "UPDATE outbox SET state = 'failed', attempts = ?, last_error = ? WHERE id = ? AND state = 'pending'",
            (attempts, stored, item.id))
        if changed == 1:
            log.error("outbox: %s for study %s to %s %s parked as %s: %s", item.kind or item.channel,
                      item.study_key or "-", item.channel, item.destination, outcome, message)
            self._notify(_with(item, attempts, stored), outcome)

    def next_due(self) -> float | None:
        """Wall-clock time the next pending item becomes due (None when nothing is pending)."""
        with self._db_lock:
            rows = self._db.execute(
                "SELECT channel, destination, MIN(next_attempt) FROM outbox WHERE state = 'pending'"
                " GROUP BY channel, destination").fetchall()
        times = [max(t, self._backoff.get((channel, dest), (0, 0.0))[1]) for channel, dest, t in rows]
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
    def prepare(self, destination: str) -> None:
        """An SR for ``destination`` is on its way: open its association now, on the sender thread, so the SR goes
        out on an association that is already open (a new one costs several round trips). Best effort: a
        destination that cannot be reached is retried when the SR is due, as always."""
        with self._db_lock:
            self._prepare.add(destination)
        self._wake.set()

    def _connect_prepared(self) -> None:
        with self._db_lock:
            destinations, self._prepare = self._prepare, set()
        for destination in destinations:
            where = ("dicom", destination)
            failures, not_before = self._backoff.get(where, (0, 0.0))
            now = time.time()
            if not_before > now:
                continue  # down: its backoff decides when to try again
            try:
                connect = getattr(self._sender(*where), "connect", None)
                if connect is not None:
                    connect()
            except Exception as exc:  # noqa: BLE001 - best effort; the send reports the same failure properly
                # Backed off like a failed send, so a destination that is down costs one attempt per backoff.
                self._backoff[where] = (failures + 1, now + self._delay(failures + 1))
                log.debug("outbox: could not connect ahead to %s (%s)", destination, type(exc).__name__)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._connect_prepared()
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
    return dataclasses.replace(item, attempts=attempts, last_error=error)
