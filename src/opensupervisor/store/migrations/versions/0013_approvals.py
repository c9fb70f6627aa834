"""MCP approval requests as issued and used, so that each answer is acted on once.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"


def upgrade() -> None:
    op.create_table(
        "os_approvals",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("response_id", sa.String(64), nullable=False),
        sa.Column("issued_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("used_by", sa.String(64), nullable=True),
        sa.Column("used_at", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_os_approvals_expires", "os_approvals", ["expires_at"])
    op.create_index("ix_os_approvals_response", "os_approvals", ["response_id"])


def downgrade() -> None:
    op.drop_index("ix_os_approvals_response", "os_approvals")
    op.drop_index("ix_os_approvals_expires", "os_approvals")
    op.drop_table("os_approvals")
