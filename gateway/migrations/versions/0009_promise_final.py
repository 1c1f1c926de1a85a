"""A case's promised date says whether the holiday calendar covered it (final) or not (estimated)

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # existing cases: NULL (not known); the deadline watch settles them like estimated ones
    with op.batch_alter_table("applications", schema=None) as batch_op:
        batch_op.add_column(sa.Column("promised_final", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("applications", schema=None) as batch_op:
        batch_op.drop_column("promised_final")
