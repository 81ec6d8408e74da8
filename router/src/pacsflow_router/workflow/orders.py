"""The durable order store: imaging orders from HL7 v2 (ORM^O01 / OMI^O23) and the polled RIS worklist.

Orders live in the results store (``config.audit.url``: a SQLite file in WAL mode with ``synchronous=FULL``, or
PostgreSQL), next to the results, feedback and audit pacsflow-api reads: when a method returns, the change is committed
and survives ``kill -9`` and power loss. :meth:`OrderStore.apply_hl7` stores the order, and
the ACK built for it, keyed by the message control ID (MSH-10), in ONE transaction: an AA is only ever sent for an
order that is already durable, and a re-sent message gets the very same ACK back and changes nothing.

Orders are keyed by (accession number, patient ID). Each row keeps the whole :class:`~pacsflow_router.domain.Order`
as JSON next to the few columns the queries need (study UID, status, modality, station, date, priority), so adding a
field to ``Order`` needs no migration.

A cancel and the arrival of the order's study decide on the same row: :meth:`OrderStore.match_study` finds the
study's order, locks its row and records the match (``matched_at``) in one transaction, and a cancel (ORC-1 CA, or SC
to cancelled) takes the same row lock before it looks. Whichever commits first wins, and the other sees it: a study
matched first makes the cancel an AE ("images arrived"); a cancel first leaves the study without an order (processed
all the same). Besides the match, a cancel is refused while the spool's instance index holds images of the order's
Study Instance UID (arrived, not yet complete), and whether a study has an AI result is asked of the spool's result
table: that is where the router keeps them.

On PostgreSQL several routers may write at once: a message control ID or an order key two writers insert at the same
time ends in a unique violation for one of them, whose transaction is then retried (and finds the other's row).

An order carries patient data: nothing here logs an order's fields; logs name :attr:`Order.key` only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import IntegrityError

from .. import metrics
from ..domain import Order, study_key
from ..ingest.spool import Spool
from ..results.schema import HL7_MESSAGES, ORDERS
from ..results.store import open_engine, upgrade

log = logging.getLogger(__name__)

#: Every status an order can have (``Order.status``).
STATUSES = ("scheduled", "in-progress", "cancelled", "discontinued", "completed", "expired")
#: Statuses of an open order: the ``pacsflow_orders_open`` gauge and the worklist.
OPEN_STATUSES = ("scheduled", "in-progress")
#: Worklist order of HL7 priorities (table 0027): stat first, routine last; empty or unknown after routine.
PRIORITY_RANK = {"S": 0, "A": 1, "T": 2, "C": 3, "P": 4, "R": 5}
#: Order control codes (ORC-1) :meth:`OrderStore.apply_hl7` understands.
ORDER_CONTROLS = ("NW", "XO", "CA", "SC", "DC")

#: Reasons passed to ``make_ack("AE", reason)``; fixed texts, never a field value.
REASON_UNKNOWN_ORDER = "no order with this accession number and patient ID"
REASON_UNABLE_TO_CANCEL = "unable to cancel: images of the order's study have already arrived"
REASON_UNSUPPORTED_CONTROL = "unsupported order control"

_ORDER_FIELDS = {f.name for f in dataclasses.fields(Order)}
#: Attempts of one write transaction that lost a race for a unique key to another writer (PostgreSQL).
_WRITE_ATTEMPTS = 5
_T = TypeVar("_T")


@dataclass(frozen=True)
class WorklistEntry:
    """One line of the AI worklist: an open order and the AI priority applied to it."""

    order: Order
    ai_critical: bool
    """A triage use case flagged the order's study critical."""
    ai_use_cases: tuple[str, ...]
    """Which use cases did, in the order they did."""
    ai_raised_at: float | None
    """Wall clock when the priority was first raised."""


@dataclass(frozen=True)
class Hl7Outcome:
    """What :meth:`OrderStore.apply_hl7` did with one message."""

    ack: bytes
    """The ER7 ACK to send back (stored with the control ID)."""
    outcome: str
    """``created``, ``updated``, ``cancelled``, ``discontinued``, ``duplicate`` or ``rejected``."""
    order: Order | None
    """The order as stored after the message (``None`` when there is none)."""


def _merge(stored: Order, incoming: Order, *, status: str | None = None) -> Order:
    """``incoming`` over ``stored``: a non-empty incoming field wins, an empty one keeps the stored value.

    HL7 order messages and worklist items often leave fields empty that an earlier message filled (an XO that only
    changes the priority, an MWL item without the patient class); in HL7 an empty field means "not sent", not
    "delete". Status and source stay the stored ones unless ``status`` is given.
    """
    changes: dict[str, Any] = {}
    for name in _ORDER_FIELDS - {"status", "source", "accession", "patient_id"}:
        value = getattr(incoming, name)
        if value:
            changes[name] = value
    if status is not None:
        changes["status"] = status
    return dataclasses.replace(stored, **changes)


def _scheduled_date(order: Order, now: float) -> str:
    """DICOM DA the worklist files the order under: its scheduled start, else the day it was received."""
    if len(order.scheduled_start) >= 8 and order.scheduled_start[:8].isdigit():
        return order.scheduled_start[:8]
    return time.strftime("%Y%m%d", time.localtime(now))


def _decode(body: str) -> Order:
    data = json.loads(body)
    return Order(**{k: v for k, v in data.items() if k in _ORDER_FIELDS})


class OrderStore:
    """Durable imaging orders in the results store, safe to share between threads (and, on PostgreSQL, between
    routers).

    Parameters
    ----------
    spool
        The router's spool: its instance index tells whether an order's study has arrived, its result table whether
        the study has an AI result.
    store
        The results store: its SQLAlchemy URL (``config.audit.url``; opened and migrated to head) or an engine on it
        (the router's :class:`~pacsflow_router.results.audit.AuditLog` engine, so an in-memory database is the same
        database).
    """

    def __init__(self, spool: Spool, store: str | Engine) -> None:
        self._spool = spool
        self._owned = isinstance(store, str)
        self.engine = open_engine(store) if isinstance(store, str) else store
        upgrade(self.engine)
        database = self.engine.url.database
        sqlite = self.engine.dialect.name == "sqlite"
        # A SQLite file: BEGIN IMMEDIATE takes the write lock before the first read, so a read-modify-write never
        # meets another connection's commit half way (SQLITE_BUSY_SNAPSHOT); the busy timeout waits for the lock.
        self._immediate = sqlite and database not in (None, "", ":memory:")
        # An in-memory SQLite database is one connection shared by every thread: its transactions take turns.
        self._lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if sqlite and not self._immediate else contextlib.nullcontext())
        self._move_spool_tables()
        self._refresh_open_gauge()

    def close(self) -> None:
        """Release the database connections of a store this object opened from a URL (an engine passed in stays
        open)."""
        if self._owned:
            self.engine.dispose()

    # -- internals ----------------------------------------------------------------------------------------------

    def _move_spool_tables(self) -> None:
        """Move the orders and control IDs an older pacsflow kept in the spool's ``state.db`` into the store.

        The rows are inserted first (a key already in the store keeps the store's row), then the spool's tables are
        dropped: a crash in between repeats the move at the next start and changes nothing twice.
        """
        moved = {name for (name,) in self._spool.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN ('orders', 'hl7_messages')")}
        if not moved:
            return
        dialect_insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite_dialect.insert
        counts = {}
        with self.engine.begin() as conn:
            for table, keys in ((ORDERS, ["accession", "patient_id"]), (HL7_MESSAGES, ["control_id"])):
                if table.name not in moved:
                    continue
                old = {row[1] for row in self._spool.execute(f"PRAGMA table_info({table.name})")}
                names = [c.name for c in table.columns if c.name in old]  # a column added since is left empty
                rows = [dict(zip(names, row, strict=True)) for row in self._spool.execute(
                    f"SELECT {', '.join(names)} FROM {table.name}")]
                for row in rows:
                    if "ai_critical" in row:
                        row["ai_critical"] = bool(row["ai_critical"])
                    if "ack" in row:
                        row["ack"] = bytes(row["ack"])
                for start in range(0, len(rows), 500):
                    conn.execute(dialect_insert(table).values(rows[start:start + 500])
                                 .on_conflict_do_nothing(index_elements=keys))
                counts[table.name] = len(rows)
        with self._spool.transaction() as db:
            for name in moved:
                db.execute(f"DROP TABLE {name}")
        log.info("moved %d orders and %d HL7 control IDs from the spool's state.db into the results store",
                 counts.get("orders", 0), counts.get("hl7_messages", 0))

    def _transaction(self, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` in one write transaction, committed before this returns; retried when another writer won the
        race for a unique key (the retry then finds that writer's row)."""
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                with self._lock, self.engine.begin() as conn:
                    if self._immediate:
                        conn.exec_driver_sql("BEGIN IMMEDIATE")
                    return work(conn)
            except IntegrityError:
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
                log.info("order store: a concurrent writer stored the same key first; retrying")
        raise AssertionError("unreachable")

    def _refresh_open_gauge(self) -> None:
        with self.engine.connect() as conn:
            open_count = conn.execute(select(func.count()).select_from(ORDERS)
                                      .where(ORDERS.c.status.in_(OPEN_STATUSES))).scalar_one()
        metrics.ORDERS_OPEN.set(open_count)

    @staticmethod
    def _row(db: Connection, accession: str, patient_id: str, *, lock: bool = True) -> Order | None:
        query = select(ORDERS.c.body).where(ORDERS.c.accession == accession, ORDERS.c.patient_id == patient_id)
        body = db.execute(query.with_for_update() if lock else query).scalar_one_or_none()
        return None if body is None else _decode(body)

    @staticmethod
    def _write(db: Connection, order: Order, now: float, *, insert_row: bool) -> None:
        columns = {
            "body": json.dumps(dataclasses.asdict(order), sort_keys=True), "study_uid": order.study_uid,
            "status": order.status, "modality": order.modality, "station_ae_title": order.scheduled_station_ae_title,
            "scheduled_date": _scheduled_date(order, now),
            "priority_rank": PRIORITY_RANK.get(order.priority, len(PRIORITY_RANK)),
            "scheduled_start": order.scheduled_start, "updated_at": now,
        }
        if insert_row:
            db.execute(insert(ORDERS).values(accession=order.accession, patient_id=order.patient_id, created_at=now,
                                             ai_critical=False, ai_use_cases="[]", **columns))
        else:
            db.execute(update(ORDERS).where(ORDERS.c.accession == order.accession,
                                            ORDERS.c.patient_id == order.patient_id).values(**columns))

    def _study_arrived(self, study_uid: str) -> bool:
        """Instances of the study are in the spool (indexed, or acknowledged and waiting in the write-ahead log)."""
        return bool(study_uid) and (bool(
            self._spool.execute("SELECT 1 FROM instances WHERE study_uid = ? LIMIT 1", (study_uid,)))
            or study_uid in self._spool.pending_studies())

    def _images_arrived(self, db: Connection, order: Order) -> bool:
        """The order's study has started: MPPS moved it on, a study was matched to it (read under the row lock the
        caller holds), or instances of its study are spooled."""
        if order.status in ("in-progress", "completed"):
            return True
        matched_at = db.execute(select(ORDERS.c.matched_at).where(
            ORDERS.c.accession == order.accession, ORDERS.c.patient_id == order.patient_id)).scalar_one_or_none()
        return matched_at is not None or self._study_arrived(order.study_uid)

    def _with_results(self, study_uids: set[str]) -> set[str]:
        """Those of ``study_uids`` the spool has an AI result for."""
        found: set[str] = set()
        uids = sorted(study_uids)
        for start in range(0, len(uids), 500):
            chunk = uids[start:start + 500]
            rows = self._spool.execute(
                f"SELECT DISTINCT study_uid FROM results WHERE study_uid IN ({', '.join('?' * len(chunk))})",
                tuple(chunk))
            found.update(row[0] for row in rows)
        return found

    def _apply(self, db: Connection, order_control: str, order: Order, now: float) -> tuple[str, Order | None, str | None]:
        """One order message's effect inside the caller's transaction: (outcome, stored order, AE reason)."""
        stored = self._row(db, order.accession, order.patient_id)
        if order_control == "NW":
            if stored is None:
                fresh = dataclasses.replace(order, status="scheduled")
                self._write(db, fresh, now, insert_row=True)
                return "created", fresh, None
            # A re-sent or re-placed order: the same key is the same order (a cancelled one is scheduled again).
            reopen = "scheduled" if stored.status not in OPEN_STATUSES else None
            merged = _merge(stored, order, status=reopen)
            self._write(db, merged, now, insert_row=False)
            return "updated", merged, None
        if order_control not in ORDER_CONTROLS:
            return "rejected", stored, REASON_UNSUPPORTED_CONTROL
        if stored is None:
            return "rejected", None, REASON_UNKNOWN_ORDER
        if order_control == "XO":
            merged = _merge(stored, order)
            self._write(db, merged, now, insert_row=False)
            return "updated", merged, None
        if order_control == "CA" or (order_control == "SC" and order.status == "cancelled"):
            if self._images_arrived(db, stored):
                return "rejected", stored, REASON_UNABLE_TO_CANCEL
            cancelled = _merge(stored, order, status="cancelled")
            self._write(db, cancelled, now, insert_row=False)
            return "cancelled", cancelled, None
        if order_control == "DC":
            stopped = _merge(stored, order, status="discontinued")
            self._write(db, stopped, now, insert_row=False)
            return "discontinued", stopped, None
        # SC: a status change; the parser put ORC-5 (mapped to a store status) into order.status.
        status = order.status if order.status in STATUSES else stored.status
        changed = _merge(stored, order, status=status)
        self._write(db, changed, now, insert_row=False)
        outcome = {"cancelled": "cancelled", "discontinued": "discontinued"}.get(status, "updated")
        return outcome, changed, None

    # -- public API ---------------------------------------------------------------------------------------------

    def apply_hl7(self, control_id: str, order_control: str, order: Order,
                  make_ack: Callable[[str, str | None], bytes]) -> Hl7Outcome:
        """Apply one parsed HL7 order message and store its ACK, in one transaction.

        Parameters
        ----------
        control_id
            MSH-10. Seen before: the stored ACK is returned again (outcome ``duplicate``) and nothing changes.
        order_control
            ORC-1: ``NW`` inserts (an existing key is updated), ``XO`` updates, ``CA`` cancels, ``DC``
            discontinues, ``SC`` sets ``order.status`` (ORC-5 as mapped by the parser). XO/CA/SC/DC for an unknown
            order, and CA (or SC to cancelled) for an order whose images already arrived (matched to a study, in
            progress, or instances of its Study Instance UID spooled), are answered AE (outcome ``rejected``).
        order
            The order as parsed; empty fields keep the stored values (HL7: empty means "not sent").
        make_ack
            ``make_ack(code, reason)`` builds the ER7 ACK: ``("AA", None)`` or ``("AE", reason)`` with one of the
            ``REASON_*`` texts of this module. Called inside the transaction (maybe more than once, when a
            concurrent writer forces a retry); it must be pure.

        Returns
        -------
        Hl7Outcome
            The ACK to send (committed before this returns), what happened, and the stored order.
        """
        now = time.time()

        def work(db: Connection) -> Hl7Outcome:
            seen = db.execute(select(HL7_MESSAGES.c.ack, HL7_MESSAGES.c.accession, HL7_MESSAGES.c.patient_id)
                              .where(HL7_MESSAGES.c.control_id == control_id)).first()
            if seen is not None:
                ack, accession, patient_id = seen
                previous = self._row(db, accession, patient_id, lock=False) if accession is not None else None
                return Hl7Outcome(bytes(ack), "duplicate", previous)
            outcome, stored, reason = self._apply(db, order_control, order, now)
            ack = make_ack("AA" if reason is None else "AE", reason)
            db.execute(insert(HL7_MESSAGES).values(control_id=control_id, ack=ack, outcome=outcome,
                                                   accession=order.accession, patient_id=order.patient_id,
                                                   received_at=now))
            return Hl7Outcome(ack, outcome, stored)

        result = self._transaction(work)
        log.info("hl7 order %s: %s %s", order.key, order_control, result.outcome)
        self._refresh_open_gauge()
        return result

    def upsert(self, order: Order) -> str:
        """Insert or update an order from the polled RIS worklist.

        Non-empty fields of ``order`` win over the stored ones; the stored status is kept (MPPS and HL7 move it)
        unless ``order.status`` is something other than ``scheduled``.

        Returns
        -------
        str
            ``created``, ``updated`` or ``unchanged``.
        """
        now = time.time()

        def work(db: Connection) -> str:
            stored = self._row(db, order.accession, order.patient_id)
            if stored is None:
                self._write(db, order, now, insert_row=True)
                return "created"
            merged = _merge(stored, order, status=None if order.status == "scheduled" else order.status)
            if merged == stored:
                return "unchanged"
            self._write(db, merged, now, insert_row=False)
            return "updated"

        outcome = self._transaction(work)
        if outcome != "unchanged":
            log.info("worklist order %s: %s", order.key, outcome)
            self._refresh_open_gauge()
        return outcome

    def get(self, accession: str, patient_id: str) -> Order | None:
        """The stored order with this accession number and patient ID, whatever its status."""
        with self.engine.connect() as conn:
            return self._row(conn, accession, patient_id, lock=False)

    def find_for_study(self, study_uid: str, accession: str, patient_id: str) -> Order | None:
        """The order an arriving study belongs to: by Study Instance UID, else by accession plus patient ID.

        Cancelled orders are never returned. Empty arguments match nothing.
        """
        o = ORDERS.c
        with self.engine.connect() as conn:
            if study_uid:
                body = conn.execute(select(o.body).where(o.study_uid == study_uid, o.status != "cancelled")
                                    .order_by(o.updated_at.desc()).limit(1)).scalar_one_or_none()
                if body is not None:
                    return _decode(body)
            if accession and patient_id:
                body = conn.execute(select(o.body).where(o.accession == accession, o.patient_id == patient_id,
                                                         o.status != "cancelled")).scalar_one_or_none()
                if body is not None:
                    return _decode(body)
        return None

    def mark_ai_critical(self, order: Order, use_case: str, at: float) -> bool:
        """Record that ``use_case`` flagged the order's study critical (idempotent).

        Parameters
        ----------
        order
            The order (only its key is used).
        use_case
            Name of the triage use case.
        at
            Wall clock of the result; the first one is kept as the time the priority was raised.

        Returns
        -------
        bool
            True if this changed the order (a new flag or a new use case), False if already recorded or unknown.
        """
        o = ORDERS.c
        key = (o.accession == order.accession, o.patient_id == order.patient_id)

        def work(db: Connection) -> bool:
            row = db.execute(select(o.ai_critical, o.ai_use_cases, o.ai_raised_at).where(*key)
                             .with_for_update()).first()
            if row is None:
                return False
            critical, use_cases_json, raised_at = row
            use_cases = json.loads(use_cases_json)
            if critical and use_case in use_cases:
                return False
            if use_case not in use_cases:
                use_cases.append(use_case)
            db.execute(update(ORDERS).where(*key).values(
                ai_critical=True, ai_use_cases=json.dumps(use_cases),
                ai_raised_at=raised_at if raised_at is not None else at, updated_at=time.time()))
            return True

        changed = self._transaction(work)
        if changed:
            log.info("order %s: AI critical (%s)", order.key, use_case)
        return changed

    def worklist(self, *, modality: str | None = None, station_ae_title: str | None = None,
                 date_from: str | None = None, date_to: str | None = None) -> list[WorklistEntry]:
        """Open orders with the AI priority applied, in reading order.

        Listed: scheduled and in-progress orders, and completed ones whose study has an AI result (flagged
        critical, or a result row in the spool). Order: AI-critical first, then priority (S, A, T, C, P, R, other),
        then scheduled start, then arrival.

        Parameters
        ----------
        modality
            Only this modality.
        station_ae_title
            Only orders for this Scheduled Station AE Title, and orders not assigned to any station.
        date_from, date_to
            DICOM DA (``YYYYMMDD``) bounds, inclusive, on the scheduled date (the day received when the order has
            no scheduled start).
        """
        o = ORDERS.c
        completed_with_study = (o.status == "completed") & (o.ai_critical | (o.study_uid != ""))
        query = select(o.body, o.status, o.study_uid, o.ai_critical, o.ai_use_cases, o.ai_raised_at).where(
            o.status.in_(OPEN_STATUSES) | completed_with_study)
        if modality:
            query = query.where(o.modality == modality)
        if station_ae_title:
            query = query.where((o.station_ae_title == station_ae_title) | (o.station_ae_title == ""))
        if date_from:
            query = query.where(o.scheduled_date >= date_from)
        if date_to:
            query = query.where(o.scheduled_date <= date_to)
        query = query.order_by(o.ai_critical.desc(), o.priority_rank, o.scheduled_start == "", o.scheduled_start,
                               o.created_at)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        # A completed order the AI did not flag stays listed while its study has a result row in the spool.
        analysed = self._with_results({r.study_uid for r in rows if r.status == "completed" and not r.ai_critical})
        return [WorklistEntry(_decode(r.body), bool(r.ai_critical), tuple(json.loads(r.ai_use_cases)), r.ai_raised_at)
                for r in rows if r.status != "completed" or r.ai_critical or r.study_uid in analysed]

    def set_status(self, accession: str, patient_id: str, status: str) -> bool:
        """Set an order's status (MPPS, matching); True if it changed, False if unchanged or unknown.

        Raises
        ------
        ValueError
            ``status`` is not one of :data:`STATUSES`.
        """
        if status not in STATUSES:
            raise ValueError(f"order status {status!r} is not one of {STATUSES}")

        def work(db: Connection) -> Order | None:
            stored = self._row(db, accession, patient_id)
            if stored is None or stored.status == status:
                return None
            self._write(db, dataclasses.replace(stored, status=status), time.time(), insert_row=False)
            return stored

        stored = self._transaction(work)
        if stored is None:
            return False
        log.info("order %s: %s", stored.key, status)
        self._refresh_open_gauge()
        return True

    def match_study(self, study_uid: str, accession: str, patient_id: str) -> Order | None:
        """The order an arriving study belongs to, matched in one transaction with the order's row locked.

        Found by Study Instance UID, else by accession number plus patient ID; cancelled orders are never matched.
        The match is recorded on the row (``matched_at``; an order matched by accession and patient ID also gets the
        study's UID, so it is found by UID from then on) before the lock is released, so a cancel racing the match
        has one outcome: committed first, the study finds no order; second, it is refused (see
        :meth:`apply_hl7`). A matched order is never expired. Idempotent.

        Parameters
        ----------
        study_uid, accession, patient_id
            The arriving study's Study Instance UID, Accession Number and Patient ID; empty ones match nothing.

        Returns
        -------
        Order or None
            The stored order after the match; None for an unordered study, or one whose order was cancelled.
        """
        o = ORDERS.c
        now = time.time()

        def work(db: Connection) -> tuple[Order | None, bool, bool]:
            found = None
            if study_uid:
                # FOR UPDATE: on PostgreSQL a cancel committed while this waited for the lock is seen (the row is
                # re-read and no longer qualifies); on SQLite BEGIN IMMEDIATE already holds the write lock.
                found = db.execute(select(o.accession, o.patient_id).where(o.study_uid == study_uid,
                                                                           o.status != "cancelled")
                                   .order_by(o.updated_at.desc()).limit(1).with_for_update()).first()
            if found is None and accession and patient_id:
                found = db.execute(select(o.accession, o.patient_id).where(
                    o.accession == accession, o.patient_id == patient_id, o.status != "cancelled")
                    .with_for_update()).first()
            if found is None:
                keys = ([o.study_uid == study_uid] if study_uid else []) + (
                    [(o.accession == accession) & (o.patient_id == patient_id)] if accession and patient_id else [])
                cancelled = bool(keys) and db.execute(select(o.accession).where(
                    or_(*keys), o.status == "cancelled").limit(1)).first() is not None
                return None, False, cancelled
            stored = self._row(db, found.accession, found.patient_id)
            assert stored is not None  # locked above, in this transaction
            linked = stored if stored.study_uid or not study_uid else dataclasses.replace(stored, study_uid=study_uid)
            if linked != stored:
                self._write(db, linked, now, insert_row=False)
            first = db.execute(update(ORDERS).where(o.accession == linked.accession, o.patient_id == linked.patient_id,
                                                    o.matched_at.is_(None)).values(matched_at=now)).rowcount
            return linked, bool(first), False

        order, first, cancelled = self._transaction(work)
        if order is not None and first:
            log.info("order %s matched to study %s", order.key, study_key(study_uid))
        elif cancelled:
            log.info("study %s: its order was cancelled before the study was matched; processed without the order",
                     study_key(study_uid))
        return order

    def expire(self, now: float, max_age_seconds: float) -> int:
        """Expire scheduled orders received more than ``max_age_seconds`` before ``now`` that never got a study.

        An order matched to a study (:meth:`match_study`) is not expired, nor one whose Study Instance UID has
        instances in the spool, nor one an AI result flagged critical. Each expired order counts in
        ``pacsflow_orders_expired_total``.

        Returns
        -------
        int
            How many orders were expired.
        """
        o = ORDERS.c
        stale = ((o.status == "scheduled") & (o.created_at < now - max_age_seconds) & ~o.ai_critical
                 & o.matched_at.is_(None))
        with self.engine.connect() as conn:
            candidates = conn.execute(select(o.accession, o.patient_id, o.study_uid).where(stale)).all()
        # The spool is another database: ask it first, then expire in one transaction whatever is still stale.
        keys = [(c.accession, c.patient_id) for c in candidates if not self._study_arrived(c.study_uid)]

        def work(db: Connection) -> list[Order]:
            expired = []
            for accession, patient_id in keys:
                body = db.execute(select(o.body).where(o.accession == accession, o.patient_id == patient_id, stale)
                                  .with_for_update()).scalar_one_or_none()
                if body is not None:
                    order = dataclasses.replace(_decode(body), status="expired")
                    self._write(db, order, now, insert_row=False)
                    expired.append(order)
            return expired

        expired = self._transaction(work) if keys else []
        for order in expired:
            log.info("order %s expired: no study after %.0f s", order.key, max_age_seconds)
        if expired:
            metrics.ORDERS_EXPIRED.inc(len(expired))
            self._refresh_open_gauge()
        return len(expired)

    def count(self, status: str | None = None) -> int:
        """Number of stored orders, or of those with ``status``."""
        query = select(func.count()).select_from(ORDERS)
        if status is not None:
            query = query.where(ORDERS.c.status == status)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())
