"""pii_keys: the ids of the keys that encrypted applicants' ID and phone numbers

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.store.tables

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pii_keys",
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("first_used_at", gateway.store.tables.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_pii_keys")),
    )


def downgrade() -> None:
    op.drop_table("pii_keys")
