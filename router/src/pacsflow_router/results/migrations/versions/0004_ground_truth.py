"""Ground truth for silent mode (issue 9): labels per accession, from an imported CSV or a final-report ORU^R01.

Revision ID: 0004_ground_truth
Revises: 0003_results
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_ground_truth"
down_revision = "0003_results"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ground_truth",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("accession", sa.String(64), nullable=False),
        sa.Column("use_case", sa.String(63), nullable=False, server_default=""),
        sa.Column("finding_code", sa.String(64), nullable=False, server_default=""),
        sa.Column("present", sa.Boolean, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("accession", "use_case", "finding_code", name="ground_truth_once"),
        sa.CheckConstraint("source IN ('csv', 'hl7')", name="ground_truth_source"),
        sa.CheckConstraint("use_case <> '' OR finding_code <> ''", name="ground_truth_names_what"),
    )


def downgrade() -> None:
    op.drop_table("ground_truth")
