"""The audit trail of every AI interaction, append-only, in any SQLAlchemy database (SQLite by default).

Two tables, written with SQLAlchemy Core so the same code runs on SQLite and PostgreSQL:

``audit_results``
    One row per study, use case and model (name, version), whatever the mode: what the AI concluded (probability,
    critical flag), what the router did with it (outcome: ``reported``, ``reported-critical``, ``logged-silent``,
    ``error: <reason>``), timings, and where the SR was queued. A unique constraint on (study key, use case, model
    name, model version, revision) makes a reprocess after a crash a no-op instead of a second record.
    ``revision`` is 0 for the first result; a late instance that changes the analysed series adds revision 1, 2, ...
    whose ``amends_sr_key`` is the ``sr_key`` of the SR it amends (keys are :func:`~.domain.study_key` hashes of the
    SRs' SOP Instance UIDs: the link is auditable without putting UIDs in the audit store).
``audit_events``
    Delivery updates (``delivered``, ``retrying``, ``failed`` per destination), appended as new rows. Nothing is
    ever UPDATEd or DELETEd through this module; the current destination status of a result is its latest event.

Studies are identified by :func:`~.domain.study_key` (a hash), never by UID, name or ID: the audit store may be
read by people who must not see patient data.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from ..errors import AuditSchemaError

log = logging.getLogger(__name__)

METADATA = MetaData()


def _append_only_table(name: str, *columns: Column[Any] | UniqueConstraint) -> Table:
    """An audit table: a row id, when the row was recorded and which study (hashed key), then ``columns``."""
    return Table(
        name, METADATA,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("recorded_at", DateTime(timezone=True), nullable=False),
        Column("study_key", String(64), nullable=False),
        *columns,
    )


RESULTS = _append_only_table(
    "audit_results",
    Column("use_case", String(63), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("model_version", Integer, nullable=False),
    Column("probability", Float, nullable=True),
    Column("critical", Boolean, nullable=False),
    Column("outcome", String(255), nullable=False),
    Column("timings", JSON, nullable=False),
    Column("destination", String(63), nullable=True),
    Column("destination_status", String(32), nullable=True),
    Column("revision", Integer, nullable=False, default=0, server_default="0"),
    Column("sr_key", String(64), nullable=True),
    Column("amends_sr_key", String(64), nullable=True),
    # Which series the use case analysed and why, or why none ("chose series 2 of 3: 1 failed image-type"); no UIDs.
    Column("selection", String(1024), nullable=True),
    # The analysed series' inputs: {"analysed", "expected", "missing", "skipped": [{"instance": <hash>, "reason",
    # "images"}]} (domain.Series.inputs); no UIDs.
    Column("inputs", JSON, nullable=True),
    UniqueConstraint("study_key", "use_case", "model_name", "model_version", "revision", name="audit_results_once"),
)

EVENTS = _append_only_table(
    "audit_events",
    Column("use_case", String(63), nullable=True),
    Column("destination", String(63), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("detail", String(1024), nullable=True),
    Column("sr_key", String(64), nullable=True),
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class AuditLog:
    """Append-only audit store at a SQLAlchemy URL.

    Parameters
    ----------
    url : str
        ``sqlite:////abs/path/audit.db`` (parent directory created), ``sqlite://`` (in memory) or
        ``postgresql://...``.
    """

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database in (None, "", ":memory:"):
                # One shared in-memory database across threads.
                kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
            else:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url, **kwargs)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_durable)
        # Before create_all, which leaves an existing table as it is: an older table would fail on the first insert
        # with an opaque database error, long after start-up.
        check_schema(self.engine)
        METADATA.create_all(self.engine)

    def record_result(
        self,
        *,
        study_key: str,
        use_case: str,
        mode: str,
        model_name: str,
        model_version: int,
        probability: float | None,
        critical: bool,
        outcome: str,
        timings: dict[str, float],
        destination: str | None = None,
        destination_status: str | None = None,
        revision: int = 0,
        sr_key: str | None = None,
        amends_sr_key: str | None = None,
        selection: str | None = None,
        inputs: dict[str, Any] | None = None,
    ) -> bool:
        """Append the one result record of a study, use case and revision.

        ``revision`` counts amendments (0: the first result); ``sr_key`` identifies the SR sent with this record and
        ``amends_sr_key`` the one it amends (both hashed SOP Instance UIDs, never the UIDs themselves).
        ``selection`` says which series was analysed and why, or why none was (acceptance criteria; no UIDs).
        ``inputs`` says how many images of the series were analysed of how many, and which instances were skipped
        and why (:meth:`pacsflow_router.domain.Series.inputs`; hashed instance keys, no UIDs).

        Returns
        -------
        bool
            True when written; False when this (study, use case, model, version, revision) already has its record (a
            reprocess after a crash), in which case nothing changes.
        """
        row = {
            "recorded_at": _now(), "study_key": study_key, "use_case": use_case, "mode": mode,
            "model_name": model_name, "model_version": int(model_version),
            "probability": None if probability is None else float(probability), "critical": bool(critical),
            "outcome": outcome[:255], "timings": {k: round(float(v), 6) for k, v in timings.items()},
            "destination": destination, "destination_status": destination_status,
            "revision": int(revision), "sr_key": sr_key, "amends_sr_key": amends_sr_key,
            "selection": None if selection is None else selection[:1024],
            "inputs": inputs,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(RESULTS).values(**row))
        except IntegrityError:
            log.info("audit: study %s use case %s already recorded for %s v%s (revision %d); keeping the first record",
                     study_key, use_case, model_name, model_version, revision)
            return False
        return True

    def record_delivery(
        self, *, study_key: str, use_case: str | None, destination: str, outcome: str, detail: str | None = None,
        sr_key: str | None = None,
    ) -> None:
        """Append a delivery event (``delivered``, ``retrying``, ``failed``) for a study's result.

        ``sr_key`` (the delivered SR's hashed SOP Instance UID) ties the event to one revision of the result.
        """
        with self.engine.begin() as conn:
            conn.execute(insert(EVENTS).values(
                recorded_at=_now(), study_key=study_key, use_case=use_case, destination=destination,
                outcome=outcome, detail=None if detail is None else detail[:1024], sr_key=sr_key,
            ))

    def records(self, *, study_key: str | None = None, use_case: str | None = None) -> list[dict[str, Any]]:
        """Result records (oldest first), each with its ``deliveries`` (events, oldest first) and the current
        ``destination_status`` (the latest event's outcome, else the status recorded with the result)."""
        query = select(RESULTS).order_by(RESULTS.c.id)
        events = select(EVENTS).order_by(EVENTS.c.id)
        if study_key is not None:
            query = query.where(RESULTS.c.study_key == study_key)
            events = events.where(EVENTS.c.study_key == study_key)
        if use_case is not None:
            query = query.where(RESULTS.c.use_case == use_case)
            events = events.where(EVENTS.c.use_case == use_case)
        with self.engine.connect() as conn:
            results = [dict(r._mapping) for r in conn.execute(query)]
            deliveries = [dict(e._mapping) for e in conn.execute(events)]
        for record in results:
            mine = [e for e in deliveries
                    if e["study_key"] == record["study_key"] and e["use_case"] == record["use_case"]
                    and e["destination"] == record["destination"]
                    # An amended result has its own SR: its events are the ones for that SR.
                    and (e["sr_key"] is None or record["sr_key"] is None or e["sr_key"] == record["sr_key"])]
            record["deliveries"] = mine
            if mine:
                record["destination_status"] = mine[-1]["outcome"]
        return results

    def events(self, *, study_key: str | None = None) -> list[dict[str, Any]]:
        """Delivery events (oldest first)."""
        query = select(EVENTS).order_by(EVENTS.c.id)
        if study_key is not None:
            query = query.where(EVENTS.c.study_key == study_key)
        with self.engine.connect() as conn:
            return [dict(e._mapping) for e in conn.execute(query)]

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()


def check_schema(engine: Engine) -> None:
    """Refuse an audit database whose tables an older pacsflow wrote.

    Tables that do not exist yet are fine (they are created); an existing table must have every column of this
    release, and ``audit_results`` its unique constraint over the revision too (else an amended result could never
    be recorded).

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
        The audit database.

    Raises
    ------
    AuditSchemaError
        When a table lacks columns or the results table has the older unique constraint; the message names the
        database, what is missing and what to do.
    """
    inspector = inspect(engine)
    problems = []
    for table in METADATA.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [column.name for column in table.columns if column.name not in present]
        if missing:
            problems.append(f"{table.name} lacks columns {', '.join(missing)}")
        elif table is RESULTS:
            wanted = next(c for c in table.constraints if isinstance(c, UniqueConstraint))
            uniques: list[set[str | None]] = [set(u["column_names"]) for u in inspector.get_unique_constraints(table.name)]
            uniques += [set(i["column_names"]) for i in inspector.get_indexes(table.name) if i["unique"]]
            if set(wanted.columns.keys()) not in uniques:
                problems.append(f"{table.name} has no unique constraint over "
                                f"({', '.join(wanted.columns.keys())})")
    if problems:
        where = engine.url.render_as_string(hide_password=True)
        raise AuditSchemaError(
            f"audit database {where} was written by an older pacsflow ({'; '.join(problems)}); move it aside "
            "(or point audit.url at a new database) or migrate it: migrations arrive with the results store "
            "(issue 9)")


def _sqlite_durable(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # WAL lets the demo and tests read while the router writes; FULL makes a returned insert survive power loss.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()
