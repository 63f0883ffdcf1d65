"""rollout changes record their API key; the environments each start applied

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rollout_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_id", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_rollout_events_key_id"), ["key_id"], unique=False)
    environment = op.create_table(
        "rollout_environment",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("percentage", sa.Float(), nullable=False),
        sa.Column("salt_digest", sa.String(length=64), nullable=False),
        sa.Column("applied_version", sa.Integer(), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_environment")),
        sa.UniqueConstraint(
            "percentage",
            "salt_digest",
            name=op.f("uq_rollout_environment_percentage_salt_digest"),
        ),
    )
    # A database seeded before this version: its seed came from the environment of the time,
    # so a start with those same values changes nothing, as it did before.
    conn = op.get_bind()
    seeded = conn.execute(
        sa.text(
            "SELECT s.salt, e.after FROM rollout_state s "
            "JOIN rollout_events e ON e.version = 1 WHERE s.id = 1"
        )
    ).first()
    if seeded is not None:
        salt, after = seeded
        values = json.loads(after) if isinstance(after, str) else after
        op.bulk_insert(
            environment,
            [
                {
                    "percentage": float(values["percentage"]),
                    "salt_digest": hashlib.sha256(salt.encode()).hexdigest(),
                    "applied_version": 1,
                    "applied_at": datetime.now(UTC),
                }
            ],
        )


def downgrade() -> None:
    op.drop_table("rollout_environment")
    with op.batch_alter_table("rollout_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollout_events_key_id"))
        batch_op.drop_column("key_id")
