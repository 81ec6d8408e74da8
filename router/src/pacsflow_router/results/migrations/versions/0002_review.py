"""Radiologist in the loop (issue 9): reader feedback, result reveals, API keys.

Revision ID: 0002_review
Revises: 0001_audit
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_review"
down_revision = "0001_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("result_key", sa.String(64), nullable=False),
        sa.Column("reader", sa.String(255), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("corrected_finding", sa.String(255), nullable=True),
        sa.Column("corrected_location", sa.JSON, nullable=True),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("result_key", "reader", "verdict", name="feedback_once"),
        sa.CheckConstraint("verdict IN ('accept', 'modify', 'reject')", name="feedback_verdict"),
    )
    op.create_table(
        "reveals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("result_key", sa.String(64), nullable=False),
        sa.Column("reader", sa.String(255), nullable=False),
        sa.Column("revealed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("secret_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("role IN ('reader', 'clinical-lead', 'integration', 'admin')", name="api_keys_role"),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_table("reveals")
    op.drop_table("feedback")
