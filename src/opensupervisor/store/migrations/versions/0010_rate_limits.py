"""Rate limits set through the admin API, and the per-minute counters every process shares.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"


def upgrade() -> None:
    op.create_table(
        "os_rate_limits",
        sa.Column("model", sa.String(255), primary_key=True),
        sa.Column("limits", sa.Text, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "os_rate_counters",
        sa.Column("bucket", sa.String(600), primary_key=True),
        sa.Column("minute", sa.BigInteger, primary_key=True),
        sa.Column("calls", sa.BigInteger, nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("os_rate_counters")
    op.drop_table("os_rate_limits")
