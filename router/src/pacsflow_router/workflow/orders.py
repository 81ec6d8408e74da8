"""The durable order store: imaging orders from HL7 v2 (ORM^O01 / OMI^O23) and the polled RIS worklist.

Orders live in the spool's ``state.db`` (WAL, ``synchronous=FULL``), so they have the spool's durability: when a
method returns, the change survives ``kill -9`` and power loss. :meth:`OrderStore.apply_hl7` stores the order, and
the ACK built for it, keyed by the message control ID (MSH-10), in ONE transaction: an AA is only ever sent for an
order that is already durable, and a re-sent message gets the very same ACK back and changes nothing.

Orders are keyed by (accession number, patient ID). Each row keeps the whole :class:`~pacsflow_router.domain.Order`
as JSON next to the few columns the queries need (study UID, status, modality, station, date, priority), so adding a
field to ``Order`` needs no migration.

An order carries patient data: nothing here logs an order's fields; logs name :attr:`Order.key` only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from sqlite3 import Connection
from typing import Any

from .. import metrics
from ..domain import Order, study_key
from ..ingest.spool import Spool

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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    accession TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    body TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    status TEXT NOT NULL,
    modality TEXT NOT NULL,
    station_ae_title TEXT NOT NULL,
    scheduled_date TEXT NOT NULL,
    priority_rank INTEGER NOT NULL,
    scheduled_start TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    ai_critical INTEGER NOT NULL DEFAULT 0,
    ai_use_cases TEXT NOT NULL DEFAULT '[]',
    ai_raised_at REAL,
    PRIMARY KEY (accession, patient_id)
);
CREATE INDEX IF NOT EXISTS orders_study ON orders (study_uid);
CREATE INDEX IF NOT EXISTS orders_status ON orders (status, created_at);
CREATE TABLE IF NOT EXISTS hl7_messages (
    control_id TEXT PRIMARY KEY,
    ack BLOB NOT NULL,
    outcome TEXT NOT NULL,
    accession TEXT,
    patient_id TEXT,
    received_at REAL NOT NULL
);
"""

_ORDER_FIELDS = {f.name for f in dataclasses.fields(Order)}


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
    """Durable imaging orders in the spool's database, safe to share between threads.

    Parameters
    ----------
    spool
        The spool whose ``state.db`` holds the orders (tables are created if missing); its instance index tells
        whether an order's study has arrived.
    """

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        with spool.transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
        self._refresh_open_gauge()

    # -- internals ----------------------------------------------------------------------------------------------

    def _refresh_open_gauge(self) -> None:
        metrics.ORDERS_OPEN.set(self.count("scheduled") + self.count("in-progress"))

    @staticmethod
    def _row(db: Connection, accession: str, patient_id: str) -> Order | None:
        row = db.execute("SELECT body FROM orders WHERE accession = ? AND patient_id = ?",
                         (accession, patient_id)).fetchone()
        return None if row is None else _decode(row[0])

    @staticmethod
    def _write(db: Connection, order: Order, now: float, *, insert: bool) -> None:
        columns = (json.dumps(dataclasses.asdict(order), sort_keys=True), order.study_uid, order.status,
                   order.modality, order.scheduled_station_ae_title, _scheduled_date(order, now),
                   PRIORITY_RANK.get(order.priority, len(PRIORITY_RANK)), order.scheduled_start)
        if insert:
            db.execute(
                "INSERT INTO orders (body, study_uid, status, modality, station_ae_title, scheduled_date, "
                "priority_rank, scheduled_start, created_at, updated_at, accession, patient_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*columns, now, now, order.accession, order.patient_id))
        else:
            db.execute(
                "UPDATE orders SET body = ?, study_uid = ?, status = ?, modality = ?, station_ae_title = ?, "
                "scheduled_date = ?, priority_rank = ?, scheduled_start = ?, updated_at = ? "
                "WHERE accession = ? AND patient_id = ?",
                (*columns, now, order.accession, order.patient_id))

    @staticmethod
    def _images_arrived(db: Connection, order: Order) -> bool:
        """The order's study has started: MPPS or a match moved it on, or instances of its study are spooled."""
        if order.status in ("in-progress", "completed"):
            return True
        if not order.study_uid:
            return False
        return db.execute("SELECT 1 FROM instances WHERE study_uid = ? LIMIT 1",
                          (order.study_uid,)).fetchone() is not None

    def _apply(self, db: Connection, order_control: str, order: Order, now: float) -> tuple[str, Order | None, str | None]:
        """One order message's effect inside the caller's transaction: (outcome, stored order, AE reason)."""
        stored = self._row(db, order.accession, order.patient_id)
        if order_control == "NW":
            if stored is None:
                fresh = dataclasses.replace(order, status="scheduled")
                self._write(db, fresh, now, insert=True)
                return "created", fresh, None
            # A re-sent or re-placed order: the same key is the same order (a cancelled one is scheduled again).
            reopen = "scheduled" if stored.status not in OPEN_STATUSES else None
            merged = _merge(stored, order, status=reopen)
            self._write(db, merged, now, insert=False)
            return "updated", merged, None
        if order_control not in ORDER_CONTROLS:
            return "rejected", stored, REASON_UNSUPPORTED_CONTROL
        if stored is None:
            return "rejected", None, REASON_UNKNOWN_ORDER
        if order_control == "XO":
            merged = _merge(stored, order)
            self._write(db, merged, now, insert=False)
            return "updated", merged, None
        if order_control == "CA":
            if self._images_arrived(db, stored):
                return "rejected", stored, REASON_UNABLE_TO_CANCEL
            cancelled = _merge(stored, order, status="cancelled")
            self._write(db, cancelled, now, insert=False)
            return "cancelled", cancelled, None
        if order_control == "DC":
            stopped = _merge(stored, order, status="discontinued")
            self._write(db, stopped, now, insert=False)
            return "discontinued", stopped, None
        # SC: a status change; the parser put ORC-5 (mapped to a store status) into order.status.
        status = order.status if order.status in STATUSES else stored.status
        changed = _merge(stored, order, status=status)
        self._write(db, changed, now, insert=False)
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
            order, and CA for an order whose images already arrived, are answered AE (outcome ``rejected``).
        order
            The order as parsed; empty fields keep the stored values (HL7: empty means "not sent").
        make_ack
            ``make_ack(code, reason)`` builds the ER7 ACK: ``("AA", None)`` or ``("AE", reason)`` with one of the
            ``REASON_*`` texts of this module. Called inside the transaction; it must be pure.

        Returns
        -------
        Hl7Outcome
            The ACK to send (durable before this returns), what happened, and the stored order.
        """
        now = time.time()
        with self._spool.transaction() as db:
            seen = db.execute("SELECT ack, accession, patient_id FROM hl7_messages WHERE control_id = ?",
                              (control_id,)).fetchone()
            if seen is not None:
                ack, accession, patient_id = seen
                previous = self._row(db, accession, patient_id) if accession is not None else None
                result = Hl7Outcome(bytes(ack), "duplicate", previous)
            else:
                outcome, stored, reason = self._apply(db, order_control, order, now)
                ack = make_ack("AA" if reason is None else "AE", reason)
                db.execute("INSERT INTO hl7_messages (control_id, ack, outcome, accession, patient_id, received_at) "
                           "VALUES (?, ?, ?, ?, ?, ?)",
                           (control_id, ack, outcome, order.accession, order.patient_id, now))
                result = Hl7Outcome(ack, outcome, stored)
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
        with self._spool.transaction() as db:
            stored = self._row(db, order.accession, order.patient_id)
            if stored is None:
                self._write(db, order, now, insert=True)
                outcome = "created"
            else:
                merged = _merge(stored, order, status=None if order.status == "scheduled" else order.status)
                if merged == stored:
                    outcome = "unchanged"
                else:
                    self._write(db, merged, now, insert=False)
                    outcome = "updated"
        if outcome != "unchanged":
            log.info("worklist order %s: %s", order.key, outcome)
            self._refresh_open_gauge()
        return outcome

    def get(self, accession: str, patient_id: str) -> Order | None:
        """The stored order with this accession number and patient ID, whatever its status."""
        rows = self._spool.execute("SELECT body FROM orders WHERE accession = ? AND patient_id = ?",
                                   (accession, patient_id))
        return _decode(rows[0][0]) if rows else None

    def find_for_study(self, study_uid: str, accession: str, patient_id: str) -> Order | None:
        """The order an arriving study belongs to: by Study Instance UID, else by accession plus patient ID.

        Cancelled orders are never returned. Empty arguments match nothing.
        """
        if study_uid:
            rows = self._spool.execute(
                "SELECT body FROM orders WHERE study_uid = ? AND status != 'cancelled' ORDER BY updated_at DESC "
                "LIMIT 1", (study_uid,))
            if rows:
                return _decode(rows[0][0])
        if accession and patient_id:
            rows = self._spool.execute(
                "SELECT body FROM orders WHERE accession = ? AND patient_id = ? AND status != 'cancelled'",
                (accession, patient_id))
            if rows:
                return _decode(rows[0][0])
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
        with self._spool.transaction() as db:
            row = db.execute("SELECT ai_critical, ai_use_cases, ai_raised_at FROM orders "
                             "WHERE accession = ? AND patient_id = ?", (order.accession, order.patient_id)).fetchone()
            if row is None:
                return False
            critical, use_cases_json, raised_at = row
            use_cases = json.loads(use_cases_json)
            if critical and use_case in use_cases:
                return False
            if use_case not in use_cases:
                use_cases.append(use_case)
            db.execute("UPDATE orders SET ai_critical = 1, ai_use_cases = ?, ai_raised_at = ?, updated_at = ? "
                       "WHERE accession = ? AND patient_id = ?",
                       (json.dumps(use_cases), raised_at if raised_at is not None else at, time.time(),
                        order.accession, order.patient_id))
        log.info("order %s: AI critical (%s)", order.key, use_case)
        return True

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
        where = ["(o.status IN ('scheduled', 'in-progress') OR (o.status = 'completed' AND (o.ai_critical = 1 OR "
                 "(o.study_uid != '' AND EXISTS (SELECT 1 FROM results r WHERE r.study_uid = o.study_uid)))))"]
        params: list[object] = []
        if modality:
            where.append("o.modality = ?")
            params.append(modality)
        if station_ae_title:
            where.append("(o.station_ae_title = ? OR o.station_ae_title = '')")
            params.append(station_ae_title)
        if date_from:
            where.append("o.scheduled_date >= ?")
            params.append(date_from)
        if date_to:
            where.append("o.scheduled_date <= ?")
            params.append(date_to)
        rows = self._spool.execute(
            "SELECT o.body, o.ai_critical, o.ai_use_cases, o.ai_raised_at FROM orders o WHERE " + " AND ".join(where)
            + " ORDER BY o.ai_critical DESC, o.priority_rank, o.scheduled_start = '', o.scheduled_start, o.created_at",
            tuple(params))
        return [WorklistEntry(_decode(body), bool(critical), tuple(json.loads(use_cases)), raised_at)
                for body, critical, use_cases, raised_at in rows]

    def set_status(self, accession: str, patient_id: str, status: str) -> bool:
        """Set an order's status (MPPS, matching); True if it changed, False if unchanged or unknown.

        Raises
        ------
        ValueError
            ``status`` is not one of :data:`STATUSES`.
        """
        if status not in STATUSES:
            raise ValueError(f"order status {status!r} is not one of {STATUSES}")
        with self._spool.transaction() as db:
            stored = self._row(db, accession, patient_id)
            if stored is None or stored.status == status:
                return False
            self._write(db, dataclasses.replace(stored, status=status), time.time(), insert=False)
        log.info("order %s: %s", stored.key, status)
        self._refresh_open_gauge()
        return True

    def link_study(self, order: Order, study_uid: str) -> Order:
        """Record the study an order got, when it was matched by accession number and patient ID only.

        From then on the order is found by its Study Instance UID, a cancel is refused ("images arrived") and it is
        never expired. Idempotent; an order that already names a study keeps it. Returns the stored order.
        """
        if order.study_uid or not study_uid:
            return order
        with self._spool.transaction() as db:
            stored = self._row(db, order.accession, order.patient_id)
            if stored is None or stored.study_uid:
                return stored or order
            linked = dataclasses.replace(stored, study_uid=study_uid)
            self._write(db, linked, time.time(), insert=False)
        log.info("order %s linked to study %s", linked.key, study_key(study_uid))
        return linked

    def expire(self, now: float, max_age_seconds: float) -> int:
        """Expire scheduled orders received more than ``max_age_seconds`` before ``now`` that never got a study.

        An order whose Study Instance UID has instances in the spool is not expired, nor one an AI result flagged
        critical (its study arrived, matched by accession and patient ID). Each expired order counts in
        ``pacsflow_orders_expired_total``.

        Returns
        -------
        int
            How many orders were expired.
        """
        with self._spool.transaction() as db:
            rows = db.execute(
                "SELECT body FROM orders o WHERE o.status = 'scheduled' AND o.created_at < ? AND o.ai_critical = 0 "
                "AND NOT "
                "(o.study_uid != '' AND EXISTS (SELECT 1 FROM instances i WHERE i.study_uid = o.study_uid))",
                (now - max_age_seconds,)).fetchall()
            expired = [dataclasses.replace(_decode(body), status="expired") for (body,) in rows]
            for order in expired:
                self._write(db, order, now, insert=False)
        for order in expired:
            log.info("order %s expired: no study after %.0f s", order.key, max_age_seconds)
        if expired:
            metrics.ORDERS_EXPIRED.inc(len(expired))
            self._refresh_open_gauge()
        return len(expired)

    def count(self, status: str | None = None) -> int:
        """Number of stored orders, or of those with ``status``."""
        if status is None:
            rows = self._spool.execute("SELECT count(*) FROM orders")
        else:
            rows = self._spool.execute("SELECT count(*) FROM orders WHERE status = ?", (status,))
        return int(rows[0][0])
