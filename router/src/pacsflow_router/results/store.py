"""The results store: one SQLAlchemy database (SQLite file by default, PostgreSQL in the cluster) whose schema Alembic
owns.

:func:`open_engine` makes the engine for a URL and :func:`upgrade` brings its schema to this release's head (run on
every open, by :class:`~.audit.AuditLog` and :class:`ResultsStore`). The tables are in :mod:`.schema`; the revisions
in ``migrations/versions``.

Orders are not here: they stay in the spool's ``state.db`` (:mod:`pacsflow_router.workflow.orders`), because an order
message is acknowledged (HL7 AA) only after its row is fsynced next to the spool it drives.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
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
from sqlalchemy import create_engine, event, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool

from ..errors import AuditSchemaError
from . import apikeys
from .schema import API_KEYS, FEEDBACK, REVEALS, ROLES, VERDICTS

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
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
    """Reader feedback, result reveals and API keys in the results store (migrated to head on open).

    Parameters
    ----------
    url : str
        The store's SQLAlchemy URL (see :func:`open_engine`).
    """

    def __init__(self, url: str) -> None:
        self.engine = open_engine(url)
        upgrade(self.engine)

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
            return conn.execute(statement).first() is not None

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
            conn.execute(insert(REVEALS).values(result_key=result_key, reader=reader, revealed_at=_now()))

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

    def authenticate(self, token: str) -> tuple[str, str] | None:
        """The (key id, role) a presented token stands for; None when unknown, revoked or wrong."""
        key_id, _, secret = token.partition(".")
        with self.engine.connect() as conn:
            row = conn.execute(select(API_KEYS).where(API_KEYS.c.id == key_id)).first()
        if row is None or row.revoked_at is not None or not apikeys.verify_secret(secret, row.secret_hash):
            return None
        return row.id, row.role

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()


def _sqlite_durable(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # WAL lets the demo and tests read while the router writes; FULL makes a returned insert survive power loss.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()
