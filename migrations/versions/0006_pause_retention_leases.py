"""rollout state keeps paused tools; job leases; tasks indexed by status and last change

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rollout_state", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("paused", sa.JSON(), server_default=sa.text("'[]'"), nullable=False)
        )
    op.create_table(
        "job_leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_job_leases")),
    )
    op.create_index("ix_tasks_status_updated_at", "tasks", ["status", "updated_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_tasks_status_updated_at", table_name="tasks")
    op.drop_table("job_leases")
    with op.batch_alter_table("rollout_state", schema=None) as batch_op:
        batch_op.drop_column("paused")
