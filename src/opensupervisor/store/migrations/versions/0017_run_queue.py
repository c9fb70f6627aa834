"""The queue of background runs is the store's: runs of a pool that no process has taken, oldest first.
A step's claim names the copy of the run that made it (its ownership epoch).

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"

_UNCLAIMED = "owner_executor IS NULL AND background"


def upgrade() -> None:
    with op.batch_alter_table("os_responses") as batch:
        batch.add_column(sa.Column("run_pool", sa.String(32), nullable=True))
    with op.batch_alter_table("os_run_steps") as batch:
        batch.add_column(sa.Column("epoch", sa.Integer, nullable=True))
    op.create_index("ix_os_responses_unclaimed", "os_responses", ["run_pool", "created_at"],
                    sqlite_where=sa.text(_UNCLAIMED), postgresql_where=sa.text(_UNCLAIMED))


def downgrade() -> None:
    op.drop_index("ix_os_responses_unclaimed", table_name="os_responses")
    with op.batch_alter_table("os_responses") as batch:
        batch.drop_column("run_pool")
    with op.batch_alter_table("os_run_steps") as batch:
        batch.drop_column("epoch")
