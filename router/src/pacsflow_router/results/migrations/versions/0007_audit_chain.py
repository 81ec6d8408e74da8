"""The tamper-evident audit chain (issue 10): ``audit_chain`` (hash-chained records), ``audit_chain_head`` (one row:
the last id and hash, the writers' lock) and ``audit_forward`` (how far each forwarder sent the chain).

Rows already in ``audit_results`` and ``audit_events`` stay as they are: the chain starts with this revision.

Revision ID: 0007_audit_chain
Revises: 0006_orders
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_audit_chain"
down_revision = "0006_orders"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_chain",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("at", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    head = op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_id", sa.Integer, nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
        sa.CheckConstraint("id = 1", name="audit_chain_head_one_row"),
    )
    op.bulk_insert(head, [{"id": 1, "last_id": 0, "last_hash": "0" * 64}])
    op.create_table(
        "audit_forward",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("last_id", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_forward")
    op.drop_table("audit_chain_head")
    op.drop_table("audit_chain")
