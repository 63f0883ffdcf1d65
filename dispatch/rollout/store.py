"""Reads and compare-and-set writes of the rollout state, each change with its audit event."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, Engine, Float, Integer, String, Table, Text, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Mapped, mapped_column

from dispatch.rollout.policy import Stickiness
from dispatch.rollout.state import RolloutAction, RolloutEvent, RolloutState
from execution.models import Base
from execution.store import utcnow


class RolloutStateRow(Base):
    """The one row holding the rollout every process routes by; `version` guards changes."""

    __tablename__ = "rollout_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    percentage: Mapped[float] = mapped_column(Float)
    tool_overrides: Mapped[dict[str, Any]] = mapped_column(JSON)
    stickiness: Mapped[str] = mapped_column(String(16))
    salt: Mapped[str] = mapped_column(String(128))
    restore_point: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    updated_at: Mapped[datetime]
    updated_by: Mapped[str] = mapped_column(String(128))


class RolloutEventRow(Base):
    """One accepted rollout change: who, when, from what, to what, and why."""

    __tablename__ = "rollout_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    action: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any]] = mapped_column(JSON)
    at: Mapped[datetime]


_STATE = cast(Table, RolloutStateRow.__table__)
_EVENTS = cast(Table, RolloutEventRow.__table__)
_ROW_ID = 1
CAS_ATTEMPTS = 5


class RolloutConflict(Exception):
    """The state changed since the caller read it; re-read and decide again."""

    def __init__(self, expected: int, current: int) -> None:
        self.expected = expected
        self.current = current
        super().__init__(
            f"rollout is at version {current}, not {expected}: someone changed it meanwhile"
        )


class NothingToRestore(Exception):
    """Restore was asked for, but no rollback has saved a point to return to."""


Transform = Callable[[RolloutState], tuple[RolloutState, Mapping[str, Any] | None]]
"""Given the current state: the next routing and the restore point to store with it."""


class RolloutStore:
    """The `rollout_state` row and its `rollout_events` history."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def version(self) -> int | None:
        """The current version: a one-column primary-key read, cheap enough to poll."""
        with self.engine.connect() as conn:
            found: int | None = conn.execute(
                select(_STATE.c.version).where(_STATE.c.id == _ROW_ID)
            ).scalar_one_or_none()
        return found

    def load(self) -> RolloutState | None:
        """The state, or None before the first start seeded it."""
        with self.engine.connect() as conn:
            row = conn.execute(select(_STATE).where(_STATE.c.id == _ROW_ID)).one_or_none()
        if row is None:
            return None
        values = row._mapping
        return RolloutState(
            version=values["version"],
            percentage=values["percentage"],
            tool_overrides=values["tool_overrides"],
            stickiness=Stickiness(values["stickiness"]),
            salt=values["salt"],
            restore_point=values["restore_point"],
            updated_at=values["updated_at"],
            updated_by=values["updated_by"],
        )

    def seed(self, *, percentage: float, salt: str) -> RolloutState:
        """Store the environment's starting values once; later starts find them already there."""
        now = utcnow()
        values = {
            "id": _ROW_ID,
            "version": 1,
            "percentage": percentage,
            "tool_overrides": {},
            "stickiness": Stickiness.TASK_ID.value,
            "salt": salt,
            "restore_point": None,
            "updated_at": now,
            "updated_by": "environment",
        }
        dialect_insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        with self.engine.begin() as conn:
            inserted = conn.execute(
                dialect_insert(_STATE)
                .values(values)
                .on_conflict_do_nothing()
                .returning(_STATE.c.id)
            ).first()
            if inserted is not None:
                after = {"percentage": percentage, "tool_overrides": {}, "stickiness": "task_id"}
                conn.execute(
                    insert(_EVENTS).values(
                        version=1,
                        action=RolloutAction.SEED,
                        actor="environment",
                        reason="starting values from CELERY_ROLLOUT_PERCENTAGE",
                        before=None,
                        after=after,
                        at=now,
                    )
                )
        state = self.load()
        assert state is not None
        return state

    def change(
        self,
        transform: Transform,
        *,
        action: RolloutAction,
        actor: str,
        reason: str,
        expected_version: int | None,
    ) -> RolloutState:
        """Apply `transform` to the current state; 409-style conflict if the version moved.

        Without `expected_version` (rollback, restore: their target does not depend on what the
        caller saw) a lost race is retried on the fresh state.
        """
        seen = 0
        for _ in range(CAS_ATTEMPTS):
            current = self.load()
            if current is None:
                raise LookupError("the rollout state is not seeded yet")
            seen = current.version
            if expected_version is not None and current.version != expected_version:
                raise RolloutConflict(expected_version, current.version)
            target, restore_point = transform(current)
            now = utcnow()
            with self.engine.begin() as conn:
                # The UPDATE is the compare-and-set: it only matches the version we read.
                matched = conn.execute(
                    update(_STATE)
                    .where(_STATE.c.id == _ROW_ID, _STATE.c.version == current.version)
                    .values(
                        version=current.version + 1,
                        percentage=target.percentage,
                        tool_overrides=dict(target.tool_overrides),
                        stickiness=target.stickiness.value,
                        restore_point=dict(restore_point) if restore_point else None,
                        updated_at=now,
                        updated_by=actor,
                    )
                    .returning(_STATE.c.version)
                ).first()
                if matched is not None:
                    conn.execute(
                        insert(_EVENTS).values(
                            version=current.version + 1,
                            action=action,
                            actor=actor,
                            reason=reason,
                            before=current.routing(),
                            after=target.routing(),
                            at=now,
                        )
                    )
            if matched is not None:
                changed = self.load()
                assert changed is not None
                return changed
            if expected_version is not None:
                latest = self.version()
                raise RolloutConflict(expected_version, latest or 0)
        raise RolloutConflict(seen, self.version() or 0)

    def history(self, *, limit: int, offset: int) -> list[RolloutEvent]:
        """Accepted changes, newest first."""
        query = select(_EVENTS).order_by(_EVENTS.c.version.desc()).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            RolloutEvent(
                version=r.version,
                action=RolloutAction(r.action),
                actor=r.actor,
                reason=r.reason,
                before=r.before,
                after=r.after,
                at=r.at,
            )
            for r in rows
        ]
