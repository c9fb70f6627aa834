"""Conversations and their items (``/v1/conversations``).

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"


def upgrade() -> None:
    op.create_table(
        "os_conversations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("next_position", sa.Integer, nullable=False),
        sa.Column("busy_response", sa.String(64), nullable=True),
        sa.Column("busy_executor", sa.String(64), nullable=True),
        sa.Column("busy_at", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_os_conversations_owner", "os_conversations", ["owner", "created_at"])
    op.create_table(
        "os_conversation_items",
        sa.Column("conversation_id", sa.String(64), primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("item_id", sa.String(64), nullable=False),
        sa.Column("item", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_os_conversation_items_item", "os_conversation_items", ["conversation_id", "item_id"])


def downgrade() -> None:
    op.drop_index("ix_os_conversation_items_item", "os_conversation_items")
    op.drop_table("os_conversation_items")
    op.drop_index("ix_os_conversations_owner", "os_conversations")
    op.drop_table("os_conversations")
