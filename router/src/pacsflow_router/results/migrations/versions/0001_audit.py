"""The audit trail as the router wrote it before Alembic (audit_results, audit_events).

A database with no audit tables gets them as they are at this revision. A database an older pacsflow wrote before the
store had migrations (no ``alembic_version``) is brought to this revision in place, whichever release wrote it: the
columns it lacks are added (existing rows keep their values; ``revision`` becomes 0) and the results table's unique
constraint is widened to the revision, so an amended result can be recorded.

Revision ID: 0001_audit
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_audit"
down_revision = None
branch_labels = None
depends_on = None

ONCE = ["study_key", "use_case", "model_name", "model_version", "revision"]


def _common() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("study_key", sa.String(64), nullable=False),
    ]


# Columns that releases before Alembic added one by one; an older table may lack any of them.
def _later_result_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [
        sa.Column("revision", sa.Integer, nullable=False, server_default="0"),
        sa.Column("sr_key", sa.String(64), nullable=True),
        sa.Column("amends_sr_key", sa.String(64), nullable=True),
        sa.Column("selection", sa.String(1024), nullable=True),
        sa.Column("inputs", sa.JSON, nullable=True),
    ]


def _later_event_columns() -> list[sa.Column]:  # type: ignore[type-arg]
    return [sa.Column("sr_key", sa.String(64), nullable=True)]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("audit_results"):
        op.create_table(
            "audit_results", *_common(),
            sa.Column("use_case", sa.String(63), nullable=False),
            sa.Column("mode", sa.String(16), nullable=False),
            sa.Column("model_name", sa.String(128), nullable=False),
            sa.Column("model_version", sa.Integer, nullable=False),
            sa.Column("probability", sa.Float, nullable=True),
            sa.Column("critical", sa.Boolean, nullable=False),
            sa.Column("outcome", sa.String(255), nullable=False),
            sa.Column("timings", sa.JSON, nullable=False),
            sa.Column("destination", sa.String(63), nullable=True),
            sa.Column("destination_status", sa.String(32), nullable=True),
            *_later_result_columns(),
            sa.UniqueConstraint(*ONCE, name="audit_results_once"),
        )
    else:
        present = {c["name"] for c in inspector.get_columns("audit_results")}
        uniques = {u["name"]: set(u["column_names"]) for u in inspector.get_unique_constraints("audit_results")}
        missing = [c for c in _later_result_columns() if c.name not in present]
        if missing or set(ONCE) not in uniques.values():
            with op.batch_alter_table("audit_results") as batch:
                for column in missing:
                    batch.add_column(column)
                if set(ONCE) not in uniques.values():
                    for name, columns in uniques.items():
                        if name and columns < set(ONCE):
                            batch.drop_constraint(name, type_="unique")
                    batch.create_unique_constraint("audit_results_once", ONCE)
    if not inspector.has_table("audit_events"):
        op.create_table(
            "audit_events", *_common(),
            sa.Column("use_case", sa.String(63), nullable=True),
            sa.Column("destination", sa.String(63), nullable=False),
            sa.Column("outcome", sa.String(32), nullable=False),
            sa.Column("detail", sa.String(1024), nullable=True),
            *_later_event_columns(),
        )
    else:
        present = {c["name"] for c in inspector.get_columns("audit_events")}
        missing = [c for c in _later_event_columns() if c.name not in present]
        if missing:
            with op.batch_alter_table("audit_events") as batch:
                for column in missing:
                    batch.add_column(column)


def downgrade() -> None:
    op.drop_table("audit_events")
    op.drop_table("audit_results")
