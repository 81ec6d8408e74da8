"""Human approval before priority and accepted drafts out (issue 9): ``approvals`` and ``draft_reports``.

Revision ID: 0005_approvals
Revises: 0004_ground_truth
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_approvals"
down_revision = "0004_ground_truth"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("result_key", sa.String(64), primary_key=True),
        sa.Column("revision", sa.Integer, primary_key=True),
        sa.Column("study_key", sa.String(64), nullable=False),
        sa.Column("use_case", sa.String(63), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("held", sa.JSON, nullable=False),
        sa.Column("decided_by", sa.String(255), nullable=True),
        sa.Column("decided_role", sa.String(32), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state IN ('pending', 'approved', 'rejected', 'released', 'dropped')",
                           name="approvals_state"),
        sa.Index("approvals_state_requested", "state", "requested_at"),
    )
    op.create_table(
        "draft_reports",
        sa.Column("result_key", sa.String(64), primary_key=True),
        sa.Column("revision", sa.Integer, primary_key=True),
        sa.Column("use_case", sa.String(63), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("accepted_by", sa.String(255), nullable=False),
        sa.Column("accepted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state IN ('accepted', 'queued', 'not-sent')", name="draft_reports_state"),
        sa.Index("draft_reports_state", "state"),
    )


def downgrade() -> None:
    op.drop_table("draft_reports")
    op.drop_table("approvals")
