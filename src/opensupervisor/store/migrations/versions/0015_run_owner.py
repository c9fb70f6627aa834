"""Fenced ownership of background runs: the process that runs one, and how often it changed hands.

Revision ID: 0015
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"


def upgrade() -> None:
    with op.batch_alter_table("os_responses") as batch:
        batch.add_column(sa.Column("owner_epoch", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("owner_executor", sa.String(64), nullable=True))
    op.create_table(
        "os_call_claims",
        sa.Column("response_id", sa.String(64), primary_key=True),
        sa.Column("call", sa.String(64), primary_key=True),
        sa.Column("executor", sa.String(64), nullable=False),
        sa.Column("claimed_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("os_call_claims")
    with op.batch_alter_table("os_responses") as batch:
        batch.drop_column("owner_executor")
        batch.drop_column("owner_epoch")
