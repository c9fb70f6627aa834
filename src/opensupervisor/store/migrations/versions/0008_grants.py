"""Grants stored through the admin API: an object and the principals that may use it.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.create_table(
        "os_grants",
        sa.Column("object", sa.String(512), primary_key=True),
        sa.Column("principals", sa.Text, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("os_grants")
