"""sync_watermarks: how far each department's change feed has been applied

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.store.tables

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_TS = gateway.store.tables.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "sync_watermarks",
        sa.Column("department", sa.String(length=32), nullable=False),
        sa.Column("watermark", _TS(), nullable=False),
        sa.Column("applied", sa.Integer(), nullable=False),
        sa.Column("synced_at", _TS(), nullable=False),
        sa.PrimaryKeyConstraint("department", name=op.f("pk_sync_watermarks")),
    )


def downgrade() -> None:
    op.drop_table("sync_watermarks")
