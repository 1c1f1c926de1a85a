"""withdrawals are asked of the department by the daemon: attempts, next attempt, lease

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.store.tables

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_TS = gateway.store.tables.UTCDateTime


def upgrade() -> None:
    with op.batch_alter_table("withdrawals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("next_attempt_at", _TS(), nullable=True))
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("settled_at", _TS(), nullable=True))
        batch_op.create_index("ix_withdrawals_due", ["outcome", "next_attempt_at"], unique=False)
    # every withdrawal recorded before this revision was settled when it was asked
    op.execute("UPDATE withdrawals SET settled_at = requested_at")


def downgrade() -> None:
    with op.batch_alter_table("withdrawals", schema=None) as batch_op:
        batch_op.drop_index("ix_withdrawals_due")
        batch_op.drop_column("settled_at")
        batch_op.drop_column("lease_owner")
        batch_op.drop_column("next_attempt_at")
        batch_op.drop_column("attempts")
