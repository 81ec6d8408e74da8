"""Orders and HL7 order messages move from the spool's ``state.db`` into the results store (issue 9).

Revision ID: 0006_orders
Revises: 0005_approvals
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_orders"
down_revision = "0005_approvals"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("accession", sa.Text, primary_key=True),
        sa.Column("patient_id", sa.Text, primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("study_uid", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("modality", sa.Text, nullable=False),
        sa.Column("station_ae_title", sa.Text, nullable=False),
        sa.Column("scheduled_date", sa.String(8), nullable=False),
        sa.Column("priority_rank", sa.Integer, nullable=False),
        sa.Column("scheduled_start", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("ai_critical", sa.Boolean, nullable=False),
        sa.Column("ai_use_cases", sa.Text, nullable=False),
        sa.Column("ai_raised_at", sa.Float, nullable=True),
    )
    op.create_index("orders_study", "orders", ["study_uid"])
    op.create_index("orders_status", "orders", ["status", "created_at"])
    op.create_table(
        "hl7_messages",
        sa.Column("control_id", sa.Text, primary_key=True),
        sa.Column("ack", sa.LargeBinary, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("accession", sa.Text, nullable=True),
        sa.Column("patient_id", sa.Text, nullable=True),
        sa.Column("received_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("hl7_messages")
    op.drop_index("orders_status", table_name="orders")
    op.drop_index("orders_study", table_name="orders")
    op.drop_table("orders")
