"""department_breakers: each process's breaker per department, for other processes to show

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.store.tables

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_TS = gateway.store.tables.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "department_breakers",
        sa.Column("department", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("open", sa.Boolean(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("open_until", _TS(), nullable=True),
        sa.Column("changed_at", _TS(), nullable=False),
        sa.PrimaryKeyConstraint("department", "owner", name=op.f("pk_department_breakers")),
    )


def downgrade() -> None:
    op.drop_table("department_breakers")
