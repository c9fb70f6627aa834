"""Catalog functions registered at run time (admin API and CLI).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "os_functions",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("entry", sa.Text, nullable=False),
        sa.Column("source_code", sa.Text, nullable=True),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("os_functions")
