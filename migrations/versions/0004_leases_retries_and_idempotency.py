"""leases, retries, pending handovers, cancel requests and idempotency keys on tasks

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMES = ("lease_expires_at", "run_after", "dispatched_at", "cancel_requested_at")


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("attempts_before_retry", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=128), nullable=True))
        for name in TIMES:
            batch_op.add_column(sa.Column(name, sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=128), nullable=True))
        batch_op.create_index(
            "uq_tasks_user_id_idempotency_key", ["user_id", "idempotency_key"], unique=True
        )
    # Tasks queued before this version were handed over when they were queued.
    op.execute("UPDATE tasks SET dispatched_at = queued_at WHERE status = 'QUEUED'")


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("uq_tasks_user_id_idempotency_key")
        for name in ("idempotency_key", *reversed(TIMES), "lease_owner", "attempts_before_retry"):
            batch_op.drop_column(name)
