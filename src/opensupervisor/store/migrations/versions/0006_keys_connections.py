"""Server keys (the approval-signing key) and connections registered at run time.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "os_keys",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "os_connections",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("entry", sa.Text, nullable=False),
        sa.Column("sealed", sa.Text, nullable=True),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("os_connections")
    op.drop_table("os_keys")
