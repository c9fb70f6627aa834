"""Background runs beat a heartbeat, so followers and restarts can tell a live run from an abandoned one.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("os_responses", sa.Column("heartbeat_at", sa.BigInteger, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("os_responses") as batch:
        batch.drop_column("heartbeat_at")
