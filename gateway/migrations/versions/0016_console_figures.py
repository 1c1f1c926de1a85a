"""console_figures: case clocks, daily decision figures and their watermark (gateway/clocks.py)

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.store.tables

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_TS = gateway.store.tables.UTCDateTime


def upgrade() -> None:
    # filled by the daemon's figures task (or the first console page) from every case: the
    # watermark starts empty, so the first refresh reads them all
    op.create_table(
        "case_clocks",
        sa.Column("application_id", sa.String(length=32), nullable=False),
        sa.Column("department", sa.String(length=32), nullable=False),
        sa.Column("open", sa.Boolean(), nullable=False),
        sa.Column("promised_by", sa.Date(), nullable=True),
        sa.Column("paused_days", sa.Integer(), nullable=False),
        sa.Column("paused_since", sa.Date(), nullable=True),
        sa.Column("due_by", sa.Date(), nullable=True),
        sa.Column("decided_on", sa.Date(), nullable=True),
        sa.Column("decision_seconds", sa.Float(), nullable=True),
        sa.Column("on_time", sa.Boolean(), nullable=True),
        sa.PrimaryKeyConstraint("application_id", name=op.f("pk_case_clocks")),
    )
    op.create_index("ix_case_clocks_open_due", "case_clocks", ["open", "due_by", "department"])
    op.create_index(
        "ix_case_clocks_decided", "case_clocks", ["department", "decided_on", "decision_seconds"]
    )
    op.create_table(
        "daily_figures",
        sa.Column("department", sa.String(length=32), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("decided", sa.Integer(), nullable=False),
        sa.Column("on_time", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("department", "day", name=op.f("pk_daily_figures")),
    )
    op.create_index("ix_daily_figures_day", "daily_figures", ["day", "department"])
    op.create_table(
        "rollup_watermarks",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("watermark", _TS(), nullable=False),
        sa.Column("refreshed_at", _TS(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_rollup_watermarks")),
    )
    # the failures page and list: failed cases, most recently failed first
    op.create_index("ix_applications_status_updated", "applications", ["status", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_applications_status_updated", table_name="applications")
    op.drop_table("rollup_watermarks")
    op.drop_index("ix_daily_figures_day", table_name="daily_figures")
    op.drop_table("daily_figures")
    op.drop_index("ix_case_clocks_decided", table_name="case_clocks")
    op.drop_index("ix_case_clocks_open_due", table_name="case_clocks")
    op.drop_table("case_clocks")
