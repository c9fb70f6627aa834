"""A response's creation time in milliseconds, for listings newest first (``created_at`` is in
seconds, and many responses share one).

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"


def upgrade() -> None:
    op.add_column("os_responses", sa.Column("created_ms", sa.BigInteger, nullable=True))
    op.execute("UPDATE os_responses SET created_ms = created_at * 1000")
    op.create_index("ix_os_responses_owner_created_ms", "os_responses", ["owner", "created_ms"])
    op.create_index("ix_os_responses_created_ms", "os_responses", ["created_ms"])


def downgrade() -> None:
    op.drop_index("ix_os_responses_created_ms", "os_responses")
    op.drop_index("ix_os_responses_owner_created_ms", "os_responses")
    op.drop_column("os_responses", "created_ms")
