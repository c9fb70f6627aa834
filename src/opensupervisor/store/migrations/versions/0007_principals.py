"""Principals (users, service principals, groups), group members and personal access tokens.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.create_table(
        "os_principals",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("is_admin", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "os_group_members",
        sa.Column("group_id", sa.String(64), primary_key=True),
        sa.Column("member_id", sa.String(64), primary_key=True),
        sa.Index("ix_os_group_members_member", "member_id"),
    )
    op.create_table(
        "os_tokens",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("principal_id", sa.String(64), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=True),
        sa.Column("revoked_at", sa.BigInteger, nullable=True),
        sa.Index("ix_os_tokens_principal", "principal_id"),
    )


def downgrade() -> None:
    op.drop_table("os_tokens")
    op.drop_table("os_group_members")
    op.drop_table("os_principals")
