"""wrong identity checks at hand-out, counted per case and per key

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.store.tables

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "verification_failures",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True),
        sa.Column("client_id", sa.String(length=32), nullable=False),
        sa.Column("application_id", sa.String(length=32), nullable=False),
        sa.Column("check", sa.String(length=16), nullable=False),
        sa.Column("at", gateway.store.tables.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verification_failures")),
    )
    op.create_index("ix_verification_failures_client", "verification_failures", ["client_id", "at"])
    op.create_index(
        "ix_verification_failures_application", "verification_failures", ["application_id", "at"]
    )


def downgrade() -> None:
    op.drop_index("ix_verification_failures_application", table_name="verification_failures")
    op.drop_index("ix_verification_failures_client", table_name="verification_failures")
    op.drop_table("verification_failures")
