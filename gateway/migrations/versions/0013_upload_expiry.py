"""uploads nothing refers to expire: materials.used_at

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.store.tables

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("materials", schema=None) as batch_op:
        batch_op.add_column(sa.Column("used_at", gateway.store.tables.UTCDateTime(), nullable=True))
        batch_op.create_index("ix_materials_unused", ["used_at", "created_at"], unique=False)
    # every upload from before this revision counts as used: nothing is expired by surprise
    op.execute("UPDATE materials SET used_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("materials", schema=None) as batch_op:
        batch_op.drop_index("ix_materials_unused")
        batch_op.drop_column("used_at")
