"""Results the reviewer panel shows (issue 9): one row per analysed result, every mode, written by the router; and the
API's access log (who called which route, by route template: no UIDs).

Revision ID: 0003_results
Revises: 0002_review
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_results"
down_revision = "0002_review"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_results",
        sa.Column("tracking_uid", sa.String(64), primary_key=True),
        sa.Column("revision", sa.Integer, primary_key=True),
        sa.Column("result_key", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("accession", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("patient_name", sa.String(324), nullable=False),
        sa.Column("procedure", sa.String(255), nullable=False),
        sa.Column("order_priority", sa.String(1), nullable=False),
        sa.Column("use_case", sa.String(63), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("finding_code", sa.String(64), nullable=False),
        sa.Column("finding_scheme", sa.String(16), nullable=False),
        sa.Column("finding_meaning", sa.String(255), nullable=False),
        sa.Column("present", sa.Boolean, nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("critical", sa.Boolean, nullable=False),
        sa.Column("slice_index", sa.Integer, nullable=False),
        sa.Column("row_fraction", sa.Float, nullable=False),
        sa.Column("col_fraction", sa.Float, nullable=False),
        sa.Column("sr_sop_uid", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_image_png", sa.LargeBinary, nullable=False),
    )
    op.create_index("review_results_study", "review_results", ["study_uid"])
    op.create_index("review_results_accession", "review_results", ["accession"])
    op.create_index("review_results_result_key", "review_results", ["result_key"])
    op.create_index("review_results_worklist", "review_results", ["critical", "order_priority", "created_at"])
    op.create_table(
        "api_access",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("identity", sa.String(255), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("route", sa.String(255), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("api_access")
    op.drop_table("review_results")
