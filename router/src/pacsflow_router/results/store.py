"""The results store: one SQLAlchemy database (SQLite file by default, PostgreSQL in the cluster) whose schema Alembic
owns.

:func:`open_engine` makes the engine for a URL and :func:`upgrade` brings its schema to this release's head (run on
every open, by :class:`~.audit.AuditLog` and :class:`ResultsStore`). The tables are in :mod:`.schema`; the revisions
in ``migrations/versions``.

Orders and the HL7 order messages' ACKs are here too (:mod:`pacsflow_router.workflow.orders`): an order message is
acknowledged (HL7 AA) only after its transaction is committed, which the SQLite engine's ``synchronous=FULL`` (and
PostgreSQL's commit) makes durable.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import case, create_engine, event, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from ..errors import AuditSchemaError
from . import apikeys, chain
from .schema import API_ACCESS, API_KEYS, FEEDBACK, GROUND_TRUTH, REVEALS, REVIEW_RESULTS, ROLES, VERDICTS

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
#: Worklist order of HL7 order priorities: stat, ASAP, timing critical, callback, pre-op, routine, none.
PRIORITY_RANK = {"S": 0, "A": 1, "T": 2, "C": 3, "P": 4, "R": 5}
_IN_PROCESS = threading.Lock()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def open_engine(url: str) -> Engine:
    """An engine for the store at ``url``.

    Parameters
    ----------
    url : str
        ``sqlite:////abs/path/store.db`` (parent directory created; WAL, synchronous=FULL), ``sqlite://`` (in memory,
        one database shared across threads) or ``postgresql+psycopg://...``.
    """
    parsed = make_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        else:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_durable)
    return engine


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    """This release's head revision."""
    revision = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert revision is not None
    return revision


def current(engine: Engine) -> str | None:
    """The revision the database at ``engine`` is at (None: never migrated)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (default: this release's head); a no-op when it is there already.

    An empty database gets every table; an audit database an older pacsflow wrote before migrations existed is
    upgraded in place, keeping its rows.

    Raises
    ------
    AuditSchemaError
        When the database is at a revision this release does not know (a newer pacsflow wrote it).
    """
    config = _alembic_config()
    try:
        # alembic.context is one module-level proxy per process: migrations in one process take turns.
        with _IN_PROCESS, _sqlite_migration_lock(engine), engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    except CommandError as exc:
        where = engine.url.render_as_string(hide_password=True)
        raise AuditSchemaError(
            f"results store {where} is at a schema revision this pacsflow does not know ({exc}); a newer pacsflow "
            "wrote it: run that release, or point the store URL at another database") from exc


@contextmanager
def _sqlite_migration_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrations of one SQLite file across processes (router and API starting at once).

    pysqlite commits each DDL statement on its own, so two migrations could interleave; an exclusive ``flock`` on a
    file next to the database orders them (the second then finds head). PostgreSQL takes an advisory lock instead
    (migrations/env.py); an in-memory database has one owner.
    """
    database = engine.url.database
    if engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        yield
        return
    with open(f"{database}.migrate-lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class ResultsStore:
    """Results for review, reader feedback, result reveals, API access and API keys in the results store (migrated
    to head on open).

    Parameters
    ----------
    url : str
        The store's SQLAlchemy URL (see :func:`open_engine`).
    """

    def __init__(self, url: str) -> None:
        self.engine = open_engine(url)
        upgrade(self.engine)

    @classmethod
    def on_engine(cls, engine: Engine) -> ResultsStore:
        """A store on an engine that is already migrated (the router's :class:`~.audit.AuditLog` engine: one URL,
        ``config.audit.url``, one pool, and an in-memory database is the same database)."""
        store = cls.__new__(cls)
        store.engine = engine
        return store

    # -- results the reviewer panel shows -------------------------------------------------------------------------
    def record_result(self, row: dict[str, Any]) -> bool:
        """Store one analysed result for the reviewer panel (a :func:`.review.review_row`); a repeat of the same
        (tracking UID, revision), e.g. a reprocess after a crash, is a no-op.

        Returns
        -------
        bool
            True when written, False when the row was there already.
        """
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(REVIEW_RESULTS).values(**row).on_conflict_do_nothing(
            index_elements=["tracking_uid", "revision"]).returning(REVIEW_RESULTS.c.revision)
        with self.engine.begin() as conn:
            return conn.execute(statement).first() is not None

    @staticmethod
    def _visible(include_silent: bool) -> Any:
        return REVIEW_RESULTS.c.mode != "silent" if not include_silent else REVIEW_RESULTS.c.mode.is_not(None)

    def worklist(self, *, include_silent: bool = False, limit: int = 50, offset: int = 0,
                 ) -> tuple[list[dict[str, Any]], int]:
        """Studies with results, one row each: critical first, then order priority (stat first), then age (oldest
        first). Silent use cases count only when ``include_silent`` (clinical leads).

        Returns
        -------
        tuple
            (rows with study_uid, accession, patient_name, patient_id, procedure, order_priority, critical,
            created_at; the total number of studies).
        """
        r = REVIEW_RESULTS.c
        # The latest revision of each result only: an amendment that clears a critical flag clears it here too.
        latest = (select(r.tracking_uid, func.max(r.revision).label("revision")).group_by(r.tracking_uid)
                  .subquery("latest"))
        current = REVIEW_RESULTS.join(latest, (r.tracking_uid == latest.c.tracking_uid)
                                      & (r.revision == latest.c.revision))
        rank = func.min(case(PRIORITY_RANK, value=r.order_priority, else_=len(PRIORITY_RANK)))
        critical = func.max(case((r.critical, 1), else_=0))
        oldest = func.min(r.created_at)
        grouped = (select(r.study_uid, func.max(r.accession).label("accession"),
                          func.max(r.patient_name).label("patient_name"), func.max(r.patient_id).label("patient_id"),
                          func.max(r.procedure).label("procedure"), rank.label("priority_rank"),
                          critical.label("critical"), oldest.label("created_at"))
                   .select_from(current).where(self._visible(include_silent)).group_by(r.study_uid))
        query = grouped.order_by(critical.desc(), rank, oldest, r.study_uid).limit(limit).offset(offset)
        count = select(func.count(func.distinct(r.study_uid))).where(self._visible(include_silent))
        order_priority = {v: k for k, v in PRIORITY_RANK.items()}
        with self.engine.connect() as conn:
            total = int(conn.execute(count).scalar_one())
            rows = [{**dict(row._mapping), "critical": bool(row.critical),
                     "order_priority": order_priority.get(row.priority_rank, "")} for row in conn.execute(query)]
        for row in rows:
            del row["priority_rank"]
        return rows, total

    def study_results(self, *, study_uid: str | None = None, accession: str | None = None,
                      include_silent: bool = False) -> list[dict[str, Any]]:
        """The latest revision of each result on a study (by Study Instance UID or accession), without the key
        image; empty when there is none (or only silent ones and ``include_silent`` is False)."""
        query = select(*(c for c in REVIEW_RESULTS.c if c.name != "key_image_png")).where(
            self._visible(include_silent))
        if study_uid is not None:
            query = query.where(REVIEW_RESULTS.c.study_uid == study_uid)
        if accession is not None:
            query = query.where(REVIEW_RESULTS.c.accession == accession)
        latest: dict[str, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query.order_by(REVIEW_RESULTS.c.use_case, REVIEW_RESULTS.c.revision)):
                latest[row.tracking_uid] = dict(row._mapping)
        return list(latest.values())

    def result(self, tracking_uid: str, *, include_silent: bool = False) -> dict[str, Any] | None:
        """The latest revision of one result with its key image; None when unknown (or silent and hidden)."""
        query = (select(REVIEW_RESULTS).where(REVIEW_RESULTS.c.tracking_uid == tracking_uid,
                                              self._visible(include_silent))
                 .order_by(REVIEW_RESULTS.c.revision.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else dict(row._mapping)

    def verdict_counts(self, use_case: str) -> dict[str, Any]:
        """Reader feedback on a use case's results, per model version: reviewed results and verdict counts."""
        r, f = REVIEW_RESULTS.c, FEEDBACK.c
        query = (select(r.model_version, f.verdict, func.count(func.distinct(f.result_key)))
                 .select_from(FEEDBACK.join(REVIEW_RESULTS, f.result_key == r.result_key))
                 .where(r.use_case == use_case).group_by(r.model_version, f.verdict))
        reviewed = (select(r.model_version, func.count(func.distinct(f.result_key)))
                    .select_from(FEEDBACK.join(REVIEW_RESULTS, f.result_key == r.result_key))
                    .where(r.use_case == use_case).group_by(r.model_version))
        versions: dict[int, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for version, count in conn.execute(reviewed):
                versions[version] = {"reviewed": count, **dict.fromkeys(VERDICTS, 0)}
            for version, verdict, count in conn.execute(query):
                versions[version][verdict] = count
        return {"use_case": use_case, "versions": [{"model_version": v, **c} for v, c in sorted(versions.items())]}

    def record_ground_truth(self, labels: list[dict[str, Any]], source: str) -> dict[str, int]:
        """Store ground-truth labels (``accession``, ``use_case``, ``finding_code``, ``present``) in one transaction.

        A label for the same (accession, use case, finding code) replaces the earlier one (a corrected final report),
        so importing the same labels twice changes nothing.

        Returns
        -------
        dict
            How many labels were ``inserted``, ``updated`` (label changed) and ``unchanged``.
        """
        g = GROUND_TRUTH.c
        done = {"inserted": 0, "updated": 0, "unchanged": 0}
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        with self.engine.begin() as conn:
            for label in labels:
                key = (g.accession == label["accession"], g.use_case == label.get("use_case", ""),
                       g.finding_code == label.get("finding_code", ""))
                before = conn.execute(select(g.present).where(*key)).first()
                if before is not None and before.present == label["present"]:
                    done["unchanged"] += 1
                    continue
                row = {"accession": label["accession"], "use_case": label.get("use_case", ""),
                       "finding_code": label.get("finding_code", ""), "present": label["present"],
                       "source": source, "recorded_at": _now()}
                conn.execute(dialect.insert(GROUND_TRUTH).values(**row).on_conflict_do_update(
                    index_elements=["accession", "use_case", "finding_code"],
                    set_={"present": row["present"], "source": source, "recorded_at": row["recorded_at"]}))
                done["inserted" if before is None else "updated"] += 1
        return done

    def ground_truth(self) -> list[dict[str, Any]]:
        """Ground-truth labels, oldest first."""
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(GROUND_TRUTH).order_by(GROUND_TRUTH.c.id))]

    def record_access(self, *, identity: str, role: str, method: str, route: str, status: int) -> None:
        """Record one API request: who, the route template (never the raw path: it holds UIDs), the status."""
        with self.engine.begin() as conn:
            conn.execute(insert(API_ACCESS).values(at=_now(), identity=identity, role=role, method=method,
                                                   route=route[:255], status=status))

    def access_log(self) -> list[dict[str, Any]]:
        """API access rows, oldest first."""
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(API_ACCESS).order_by(API_ACCESS.c.id))]

    def record_feedback(
        self, *, result_key: str, reader: str, verdict: str, corrected_finding: str | None = None,
        corrected_location: dict[str, Any] | None = None, comment: str | None = None,
    ) -> bool:
        """Record a reader's verdict on a result; idempotent per (result, reader, verdict), also under concurrency.

        Returns
        -------
        bool
            True when written; False when this reader already gave this verdict on this result (nothing changes).

        Raises
        ------
        ValueError
            When ``verdict`` is not accept, modify or reject.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        row = {"result_key": result_key, "reader": reader, "verdict": verdict,
               "corrected_finding": corrected_finding, "corrected_location": corrected_location,
               "comment": comment, "created_at": _now()}
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        # ON CONFLICT DO NOTHING: two concurrent posts of the same verdict both succeed and one row remains, where
        # catching IntegrityError would abort a surrounding PostgreSQL transaction.
        statement = dialect.insert(FEEDBACK).values(**row).on_conflict_do_nothing(
            index_elements=["result_key", "reader", "verdict"]).returning(FEEDBACK.c.id)
        with self.engine.begin() as conn:
            written = conn.execute(statement).first()
            if written is not None:
                chain.append(conn, "feedback", actor=reader, subject=result_key, detail={"verdict": verdict},
                             covers=("feedback", written.id, row))
            return written is not None

    def feedback(self, *, result_key: str | None = None) -> list[dict[str, Any]]:
        """Feedback rows, oldest first."""
        query = select(FEEDBACK).order_by(FEEDBACK.c.id)
        if result_key is not None:
            query = query.where(FEEDBACK.c.result_key == result_key)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def record_reveal(self, *, result_key: str, reader: str) -> None:
        """Record that ``reader`` asked to see the AI result ``result_key`` now."""
        with self.engine.begin() as conn:
            row = {"result_key": result_key, "reader": reader}
            row_id = conn.execute(insert(REVEALS).values(**row, revealed_at=_now()).returning(REVEALS.c.id)).scalar_one()
            chain.append(conn, "result-shown", actor=reader, subject=result_key, covers=("reveals", row_id, row))

    def reveals(self, *, result_key: str | None = None) -> list[dict[str, Any]]:
        """Reveal rows, oldest first."""
        query = select(REVEALS).order_by(REVEALS.c.id)
        if result_key is not None:
            query = query.where(REVEALS.c.result_key == result_key)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def create_api_key(self, role: str) -> tuple[str, str]:
        """Make an API key for ``role``; returns (key id, token ``<id>.<secret>``). Only the hash is stored.

        Raises
        ------
        ValueError
            When ``role`` is not one of reader, clinical-lead, integration, admin.
        """
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
        key_id, secret = apikeys.new_id(), apikeys.new_secret()
        with self.engine.begin() as conn:
            conn.execute(insert(API_KEYS).values(id=key_id, secret_hash=apikeys.hash_secret(secret), role=role,
                                                 created_at=_now()))
        return key_id, f"{key_id}.{secret}"

    def rotate_api_key(self, key_id: str) -> str:
        """Give key ``key_id`` a new secret (the old one stops working); returns the new token.

        Raises
        ------
        KeyError
            When there is no such key, or it is revoked.
        """
        secret = apikeys.new_secret()
        with self.engine.begin() as conn:
            done = conn.execute(update(API_KEYS).where(API_KEYS.c.id == key_id, API_KEYS.c.revoked_at.is_(None))
                                .values(secret_hash=apikeys.hash_secret(secret), rotated_at=_now())).rowcount
        if done != 1:
            raise KeyError(f"no active API key {key_id}")
        return f"{key_id}.{secret}"

    def revoke_api_key(self, key_id: str) -> None:
        """Revoke key ``key_id`` for good.

        Raises
        ------
        KeyError
            When there is no such key, or it is revoked already.
        """
        with self.engine.begin() as conn:
            done = conn.execute(update(API_KEYS).where(API_KEYS.c.id == key_id, API_KEYS.c.revoked_at.is_(None))
                                .values(revoked_at=_now())).rowcount
        if done != 1:
            raise KeyError(f"no active API key {key_id}")

    def active_key(self, key_id: str) -> tuple[str, dt.datetime | None] | None:
        """(role, when last rotated) of an unrevoked key, without checking a secret (a signed session names it);
        None when unknown or revoked."""
        with self.engine.connect() as conn:
            row = conn.execute(select(API_KEYS.c.role, API_KEYS.c.rotated_at, API_KEYS.c.revoked_at)
                               .where(API_KEYS.c.id == key_id)).first()
        if row is None or row.revoked_at is not None:
            return None
        rotated = row.rotated_at
        if rotated is not None and rotated.tzinfo is None:  # SQLite hands back naive UTC
            rotated = rotated.replace(tzinfo=dt.UTC)
        return row.role, rotated

    def authenticate(self, token: str) -> tuple[str, str] | None:
        """The (key id, role) a presented token stands for; None when unknown, revoked or wrong (a ``bad-key``
        record in the audit chain, naming the key id only when it is one of ours, never the secret)."""
        key_id, _, secret = token.partition(".")
        with self.engine.connect() as conn:
            row = conn.execute(select(API_KEYS).where(API_KEYS.c.id == key_id)).first()
        if row is None or row.revoked_at is not None or not apikeys.verify_secret(secret, row.secret_hash):
            why = "unknown" if row is None else "revoked" if row.revoked_at is not None else "wrong secret"
            chain.record(self.engine, "bad-key", actor="" if row is None else row.id, outcome="failure",
                         detail={"reason": why})
            return None
        return row.id, row.role

    def record_login(self, identity: str, *, method: str) -> None:
        """Append a ``login`` record (a page session was issued) to the audit chain; ``method``: api-key or oidc."""
        chain.record(self.engine, "login", actor=identity, detail={"method": method})

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()


def _sqlite_durable(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # WAL lets the demo and tests read while the router writes; FULL makes a returned insert survive power loss.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def open_for_command(command: str, url: str) -> ResultsStore | int:
    """The store for a ``pacsflow`` command line, or the exit status after saying on stderr why it cannot be opened
    (1: unreachable, 2: written by a newer release)."""
    try:
        return ResultsStore(url)
    except OperationalError as exc:
        print(f"pacsflow {command}: cannot open the results store: {exc.orig}", file=sys.stderr)
        return 1
    except AuditSchemaError as exc:
        print(f"pacsflow {command}: {exc}", file=sys.stderr)
        return 2
