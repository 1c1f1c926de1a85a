"""result documents, handovers, supplements, withdrawals (issue 6)

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import gateway.store.tables

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = gateway.store.tables.UTCDateTime
_FK_APP = "applications.id"


def upgrade() -> None:
    op.create_table(
        "result_documents",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("application_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=100), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("created_at", _TS(), nullable=False),
        sa.ForeignKeyConstraint(
            ["application_id"],
            [_FK_APP],
            name=op.f("fk_result_documents_application_id_applications"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_documents")),
    )
    with op.batch_alter_table("result_documents", schema=None) as batch_op:
        batch_op.create_index("ix_result_documents_application", ["application_id"], unique=False)
    op.create_table(
        "handovers",
        sa.Column("application_id", sa.String(length=32), nullable=False),
        sa.Column("centre", sa.String(length=32), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("pickup_code", sa.String(length=16), nullable=True),
        sa.Column("code_failures", sa.Integer(), nullable=False),
        sa.Column("ready_at", _TS(), nullable=True),
        sa.Column("outcome", sa.String(length=12), nullable=True),
        sa.Column("handed_out_at", _TS(), nullable=True),
        sa.Column("handed_out_by", sa.String(length=100), nullable=True),
        sa.Column("window", sa.String(length=32), nullable=True),
        sa.Column("verified_with", sa.String(length=16), nullable=True),
        sa.Column("delivery_method", sa.String(length=32), nullable=True),
        sa.Column("carrier", sa.String(length=64), nullable=True),
        sa.Column("tracking_number", sa.String(length=64), nullable=True),
        sa.Column("address", sa.Text(), nullable=True),
        sa.Column("recipient", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["application_id"], [_FK_APP], name=op.f("fk_handovers_application_id_applications")
        ),
        sa.PrimaryKeyConstraint("application_id", name=op.f("pk_handovers")),
    )
    with op.batch_alter_table("handovers", schema=None) as batch_op:
        batch_op.create_index("ix_handovers_centre_ready", ["centre", "ready_at"], unique=False)
    op.create_table(
        "supplements",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("application_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("materials", sa.JSON(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("created_at", _TS(), nullable=False),
        sa.ForeignKeyConstraint(
            ["application_id"], [_FK_APP], name=op.f("fk_supplements_application_id_applications")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_supplements")),
        sa.UniqueConstraint(
            "application_id", "version", name=op.f("uq_supplements_application_id")
        ),
    )
    op.create_table(
        "withdrawals",
        sa.Column("application_id", sa.String(length=32), nullable=False),
        sa.Column("requested_at", _TS(), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("from_status", sa.String(length=24), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("needs_ops", sa.Boolean(), nullable=False),
        sa.Column("resolved_at", _TS(), nullable=True),
        sa.Column("resolved_by", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["application_id"], [_FK_APP], name=op.f("fk_withdrawals_application_id_applications")
        ),
        sa.PrimaryKeyConstraint("application_id", name=op.f("pk_withdrawals")),
    )
    with op.batch_alter_table("withdrawals", schema=None) as batch_op:
        batch_op.create_index("ix_withdrawals_needs_ops", ["needs_ops"], unique=False)


def downgrade() -> None:
    op.drop_table("withdrawals")
    op.drop_table("supplements")
    op.drop_table("handovers")
    op.drop_table("result_documents")
