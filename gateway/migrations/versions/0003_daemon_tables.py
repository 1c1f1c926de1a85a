"""daemon tables: task leases, reconciliation runs and discrepancies, archives

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.store.tables

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = gateway.store.tables.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "task_leases",
        sa.Column("task", sa.String(length=100), nullable=False),
        sa.Column("tick", _TS(), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("started_at", _TS(), nullable=False),
        sa.Column("expires_at", _TS(), nullable=False),
        sa.Column("finished_at", _TS(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("task", "tick", name=op.f("pk_task_leases")),
    )
    with op.batch_alter_table("task_leases", schema=None) as batch_op:
        batch_op.create_index("ix_task_leases_task_open", ["task", "finished_at"], unique=False)
    op.create_table(
        "reconcile_runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("department", sa.String(length=32), nullable=False),
        sa.Column("since", _TS(), nullable=False),
        sa.Column("until", _TS(), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", _TS(), nullable=False),
        sa.Column("finished_at", _TS(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconcile_runs")),
    )
    with op.batch_alter_table("reconcile_runs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_reconcile_runs_department", ["department", "started_at"], unique=False
        )
    op.create_table(
        "reconcile_discrepancies",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("application_id", sa.String(length=32), nullable=True),
        sa.Column("department_case_id", sa.String(length=128), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("gateway_status", sa.String(length=24), nullable=True),
        sa.Column("department_status", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("at", _TS(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["reconcile_runs.id"],
            name=op.f("fk_reconcile_discrepancies_run_id_reconcile_runs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconcile_discrepancies")),
    )
    with op.batch_alter_table("reconcile_discrepancies", schema=None) as batch_op:
        batch_op.create_index("ix_reconcile_discrepancies_run", ["run_id", "id"], unique=False)
    op.create_table(
        "idempotency_records_archive",
        sa.Column("client_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS(), nullable=False),
        sa.Column("archived_at", _TS(), nullable=False),
        sa.PrimaryKeyConstraint("client_id", "key", name=op.f("pk_idempotency_records_archive")),
    )
    op.create_table(
        "callback_events_archive",
        sa.Column("department", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("application_id", sa.String(length=32), nullable=True),
        sa.Column("received_at", _TS(), nullable=False),
        sa.Column("archived_at", _TS(), nullable=False),
        sa.PrimaryKeyConstraint("department", "event_id", name=op.f("pk_callback_events_archive")),
    )


def downgrade() -> None:
    op.drop_table("callback_events_archive")
    op.drop_table("idempotency_records_archive")
    op.drop_table("reconcile_discrepancies")
    op.drop_table("reconcile_runs")
    op.drop_table("task_leases")
