"""Durable background runs: run options, a status index for the queue bound, and the executors registry.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column("os_responses", sa.Column("options", sa.Text, nullable=True))
    op.create_index("ix_os_responses_status", "os_responses", ["status", "background"])
    op.create_table(
        "os_executors",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.BigInteger, nullable=False),
        sa.Column("heartbeat_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("os_executors")
    op.drop_index("ix_os_responses_status", "os_responses")
    with op.batch_alter_table("os_responses") as batch:
        batch.drop_column("options")
