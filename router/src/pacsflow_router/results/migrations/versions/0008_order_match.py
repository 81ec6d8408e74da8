"""``orders.matched_at``: when an arriving study was matched to the order (issue 8).

The match and a cancel (ORC-1 CA, or SC to cancelled) decide on the same row under its lock: once ``matched_at`` is
set a cancel is refused, and a cancelled order is never matched (workflow/orders.py ``OrderStore.match_study``).
Existing rows start unmatched; an order linked to its study before this revision is still protected by the spool's
instance index.

Revision ID: 0008_order_match
Revises: 0007_audit_chain
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_order_match"
down_revision = "0007_audit_chain"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("matched_at", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("matched_at")
