"""Responses, their input and output items, and the append-only event log.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "os_responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("background", sa.Boolean, nullable=False),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("previous_response_id", sa.String(64), nullable=True),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("request", sa.Text, nullable=False),
    )
    op.create_index("ix_os_responses_owner_created", "os_responses", ["owner", "created_at"])
    op.create_table(
        "os_response_items",
        sa.Column("response_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("item_id", sa.String(64), nullable=True),
        sa.Column("item", sa.Text, nullable=False),
    )
    op.create_index("ix_os_response_items_item_id", "os_response_items", ["item_id"])
    op.create_table(
        "os_response_events",
        sa.Column("response_id", sa.String(64), primary_key=True),
        sa.Column("sequence_number", sa.Integer, primary_key=True),
        sa.Column("event", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("os_response_events")
    op.drop_table("os_response_items")
    op.drop_table("os_responses")
