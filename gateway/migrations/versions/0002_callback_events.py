"""callback events (replay protection for department callbacks)

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.store.tables

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "callback_events",
        sa.Column("department", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("application_id", sa.String(length=32), nullable=True),
        sa.Column("received_at", gateway.store.tables.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("department", "event_id", name=op.f("pk_callback_events")),
    )


def downgrade() -> None:
    op.drop_table("callback_events")
