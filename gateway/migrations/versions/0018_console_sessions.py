"""console_sessions: ops console sign-ins in the database, so every API process knows them

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.store.tables

revision = "0018"
down_revision = "0017"
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


def downgrade() -> None:
    op.drop_index("ix_console_sessions_key", table_name="console_sessions")
    op.drop_table("console_sessions")
