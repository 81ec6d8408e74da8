"""Alembic environment of the results store: runs on the connection :func:`pacsflow_router.results.store.upgrade`
hands over (``config.attributes["connection"]``), never on a URL of its own, so an in-memory SQLite database and the
caller's engine options are the ones migrated."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    if connection.dialect.name == "postgresql":
        # Two routers (or a router and the API) starting on an empty database at once: the second waits here, then
        # finds the first one's version and has nothing to do. The lock ends with the transaction.
        connection.execute(text("SELECT pg_advisory_xact_lock(7346581)"))
    context.run_migrations()
