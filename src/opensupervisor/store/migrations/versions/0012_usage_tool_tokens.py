"""Usage: the tokens of the model calls that tools make themselves (text to SQL, grounded answers).

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"


def upgrade() -> None:
    with op.batch_alter_table("os_usage") as batch:
        batch.add_column(sa.Column("tool_input_tokens", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("tool_output_tokens", sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("os_usage") as batch:
        batch.drop_column("tool_output_tokens")
        batch.drop_column("tool_input_tokens")
