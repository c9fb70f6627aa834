"""Idempotency keys of create requests, so that a retried create answers with the response it made.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"


def upgrade() -> None:
    op.create_table(
        "os_idempotency_keys",
        sa.Column("principal", sa.String(255), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("executor", sa.String(255), nullable=False),
        sa.Column("response_id", sa.String(64), nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_os_idempotency_keys_expires", "os_idempotency_keys", ["expires_at"])
    op.create_index("ix_os_idempotency_keys_response", "os_idempotency_keys", ["response_id"])


def downgrade() -> None:
    op.drop_index("ix_os_idempotency_keys_response", "os_idempotency_keys")
    op.drop_index("ix_os_idempotency_keys_expires", "os_idempotency_keys")
    op.drop_table("os_idempotency_keys")
