"""console_sessions: ops console sign-ins in the database, so every API process knows them; an
index of unfinished dispatch jobs (the console's queues); partial indexes of the open case
clocks; deliveries per department per hour (the overview's sparkline)

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.store.tables

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

_TS = gateway.store.tables.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("key_sha256", sa.String(length=64), nullable=False),
        sa.Column("started_at", _TS(), nullable=False),
        sa.Column("seen_at", _TS(), nullable=False),
        sa.Column("new_key", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_console_sessions")),
    )
    op.create_index("ix_console_sessions_key", "console_sessions", ["key_sha256"])
    op.add_column("daily_figures", sa.Column("decision_seconds", sa.Float(), nullable=True))
    # every day's row counted again from the clocks, with the new sum
    op.execute("DELETE FROM daily_figures")
    op.execute(
        "INSERT INTO daily_figures (department, day, decided, on_time, decision_seconds)"
        " SELECT department, decided_on, count(*), sum(CASE WHEN on_time THEN 1 ELSE 0 END),"
        " sum(decision_seconds) FROM case_clocks WHERE decided_on IS NOT NULL"
        " GROUP BY department, decided_on"
    )
    op.create_table(
        "hourly_deliveries",
        sa.Column("department", sa.String(length=32), nullable=False),
        sa.Column("hour", _TS(), nullable=False),
        sa.Column("delivered", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("department", "hour", name=op.f("pk_hourly_deliveries")),
    )
    op.create_index("ix_hourly_deliveries_hour", "hourly_deliveries", ["hour"])
    # the open clocks only: the running ones by due date, the paused ones (read on the day)
    op.drop_index("ix_case_clocks_open_due", table_name="case_clocks")
    for name, columns, condition in (
        ("ix_case_clocks_running", ["department", "due_by"], "paused_since IS NULL"),
        (
            "ix_case_clocks_paused",
            ["department", "promised_by", "paused_days", "paused_since"],
            "paused_since IS NOT NULL",
        ),
    ):
        op.create_index(
            name,
            "case_clocks",
            columns,
            sqlite_where=sa.text(f"open IS 1 AND {condition}"),
            postgresql_where=sa.text(f"open IS true AND {condition}"),
        )
    unfinished = sa.text("state IN ('pending', 'leased')")
    op.create_index(
        "ix_dispatch_jobs_unfinished",
        "dispatch_jobs",
        ["state", "department", "attempts"],
        sqlite_where=unfinished,
        postgresql_where=unfinished,
    )


def downgrade() -> None:
    op.drop_index("ix_hourly_deliveries_hour", table_name="hourly_deliveries")
    op.drop_table("hourly_deliveries")
    with op.batch_alter_table("daily_figures") as batch:
        batch.drop_column("decision_seconds")
    op.drop_index("ix_dispatch_jobs_unfinished", table_name="dispatch_jobs")
    op.drop_index("ix_case_clocks_paused", table_name="case_clocks")
    op.drop_index("ix_case_clocks_running", table_name="case_clocks")
    op.create_index("ix_case_clocks_open_due", "case_clocks", ["open", "due_by", "department"])
    op.drop_index("ix_console_sessions_key", table_name="console_sessions")
    op.drop_table("console_sessions")
