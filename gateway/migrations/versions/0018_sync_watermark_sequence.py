"""sync_watermarks.sequence: the last change number applied, for departments that number
their changes (a sequence feed)

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sync_watermarks") as batch:
        batch.add_column(sa.Column("sequence", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_watermarks") as batch:
        batch.drop_column("sequence")
