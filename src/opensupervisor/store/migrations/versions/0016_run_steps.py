"""The steps of background runs, recorded in the store: hosted-call claims become steps with outputs.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"


def upgrade() -> None:
    op.create_table(
        "os_run_steps",
        sa.Column("response_id", sa.String(64), primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("executor", sa.String(64), nullable=False),
        sa.Column("claimed_at", sa.BigInteger, nullable=False),
        sa.Column("output", sa.Text, nullable=True),
    )
    # Claims named calls by their DBOS step; runs that made them were started under an earlier
    # step format, which this release does not resume (``runs.durable.APP_VERSION``).
    op.drop_table("os_call_claims")


def downgrade() -> None:
    op.create_table(
        "os_call_claims",
        sa.Column("response_id", sa.String(64), primary_key=True),
        sa.Column("call", sa.String(64), primary_key=True),
        sa.Column("executor", sa.String(64), nullable=False),
        sa.Column("claimed_at", sa.BigInteger, nullable=False),
    )
    op.drop_table("os_run_steps")
