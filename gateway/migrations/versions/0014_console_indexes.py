"""console_indexes: what the ops console reads by time (deliveries per hour, decisions per period)

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # the overview's deliveries today and in the last 24 h: events of one status since a time
    op.create_index("ix_events_to_status_at", "events", ["to_status", "at"])
    # the board and department pages: cases decided in a period
    op.create_index("ix_applications_decided_at", "applications", ["decided_at"])


def downgrade() -> None:
    op.drop_index("ix_applications_decided_at", table_name="applications")
    op.drop_index("ix_events_to_status_at", table_name="events")
