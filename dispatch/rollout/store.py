"""Reads and compare-and-set writes of the rollout state, each change with its audit event."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import (
    JSON,
    Connection,
    Engine,
    Float,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from dispatch.rollout.policy import Stickiness
from dispatch.rollout.state import LIMITED_ACTIONS, RolloutAction, RolloutEvent, RolloutState
from execution.models import Base, utcnow


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
    paused: Mapped[list[str]] = mapped_column(JSON, server_default=text("'[]'"))
    """The tools whose dispatch is paused ("*": all of them)."""


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
    key_id: Mapped[str | None] = mapped_column(String(64), index=True)
    """The API key that made the change (None: the environment, the guard): what the per-key
    change limit counts."""


class RolloutEnvironmentRow(Base):
    """Each (CELERY_ROLLOUT_PERCENTAGE, ROLLOUT_SALT) a process started with and adopted.

    A process starting with values never seen before adopts them; one starting with values
    adopted earlier and since replaced is an old process restarting late: it changes nothing.
    The salt is kept as a digest: the table only needs to recognise it.
    """

    __tablename__ = "rollout_environment"
    __table_args__ = (UniqueConstraint("percentage", "salt_digest"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    percentage: Mapped[float] = mapped_column(Float)
    salt_digest: Mapped[str] = mapped_column(String(64))
    applied_version: Mapped[int] = mapped_column(Integer)
    applied_at: Mapped[datetime]


_STATE = cast(Table, RolloutStateRow.__table__)
_EVENTS = cast(Table, RolloutEventRow.__table__)
_ENVIRONMENT = cast(Table, RolloutEnvironmentRow.__table__)
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


class RolloutRateLimited(Exception):
    """This key made its allowance of changes within the window; nothing was written."""

    def __init__(self, limit: ChangeLimit, retry_after: float) -> None:
        self.limit = limit
        self.retry_after = retry_after
        super().__init__(
            f"too many rollout changes with this key: at most {limit.changes} per "
            f"{limit.window_seconds:g} s (ROLLOUT_CHANGE_LIMIT); rollback and restore are "
            "never limited"
        )


@dataclass(frozen=True, slots=True)
class ChangeLimit:
    """At most `changes` accepted changes per API key in any `window_seconds`.

    Counted from the audit history, inside the change's own transaction, so every API process
    shares one count and a refused request counts for nothing."""

    changes: int
    window_seconds: float


Transform = Callable[[RolloutState], tuple[RolloutState, Mapping[str, Any] | None] | None]
"""Given the current state: the next routing and the restore point to store with it, or None
when there is nothing to change."""


class EnvironmentOutcome(StrEnum):
    """What a start did with its environment's percentage and salt."""

    SEEDED = "seeded"
    """First start anywhere: the environment's values are the first state."""
    ADOPTED = "adopted"
    """Values no process had started with: adopted as a change by "environment"."""
    UNCHANGED = "unchanged"
    """The values last adopted: the state in force (runtime changes included) stays."""
    STALE = "stale"
    """Values adopted once and since replaced (an old process in a rolling deploy): ignored."""
    NOT_SET = "not set"
    """The environment sets neither: the stored rollout stays in force."""


@dataclass(frozen=True, slots=True)
class EnvironmentApplied:
    """The state after a start applied its environment, and what that did."""

    state: RolloutState
    outcome: EnvironmentOutcome
    percentage: float | None
    """The environment's CELERY_ROLLOUT_PERCENTAGE; None if it does not set it."""


def salt_digest(salt: str) -> str:
    """How the environment table recognises a salt without storing it."""
    return hashlib.sha256(salt.encode()).hexdigest()


class RolloutStore:
    """The `rollout_state` row, its `rollout_events` history and the environments applied."""

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
            return _load(conn)

    def apply_environment(
        self, *, percentage: float, salt: str, percentage_set: bool = True, salt_set: bool = True
    ) -> EnvironmentApplied:
        """Bring this start's CELERY_ROLLOUT_PERCENTAGE and ROLLOUT_SALT to the stored state.

        The rule (rollout.md, "What decides where a new task runs"): values no process started
        with before are adopted, as a change by "environment"; the values adopted last change
        nothing, so runtime changes stay in force; values adopted once and since replaced
        change nothing either: an old process restarting late in a rolling deploy cannot move
        the rollout back. During a rollback an adoption only replaces the restore point. A
        value the environment does not set (`*_set` false: the default) takes no part: only
        the first start anywhere writes defaults.
        """
        for _ in range(CAS_ATTEMPTS):
            with self.engine.begin() as conn:
                if _seed(conn, percentage=percentage, salt=salt):
                    outcome = EnvironmentOutcome.SEEDED
                    break
                known = conn.execute(
                    select(_ENVIRONMENT.c.percentage, _ENVIRONMENT.c.salt_digest).order_by(
                        _ENVIRONMENT.c.applied_version.desc()
                    )
                ).all()
            pairs = [(p, d) for p, d in known]
            if not (percentage_set or salt_set):
                outcome = EnvironmentOutcome.NOT_SET
                break
            # What the environment does not set is taken as last applied: it changes nothing.
            last_percentage, last_digest = pairs[0] if pairs else (percentage, salt_digest(salt))
            wanted = (
                percentage if percentage_set else last_percentage,
                salt_digest(salt) if salt_set else last_digest,
            )
            if pairs and pairs[0] == wanted:
                outcome = EnvironmentOutcome.UNCHANGED
                break
            if wanted in pairs:
                outcome = EnvironmentOutcome.STALE
                break
            try:
                self.change(
                    _adopt_environment(
                        percentage if percentage_set else None, salt if salt_set else None
                    ),
                    action=RolloutAction.ENVIRONMENT,
                    actor="environment",
                    reason=_environment_reason(wanted, pairs),
                    expected_version=None,
                    environment=wanted,
                )
            except IntegrityError:
                continue  # another process adopted the same values first: read again
            outcome = EnvironmentOutcome.ADOPTED
            break
        else:
            raise RolloutConflict(0, self.version() or 0)
        state = self.load()
        assert state is not None
        return EnvironmentApplied(
            state=state, outcome=outcome, percentage=percentage if percentage_set else None
        )

    def change(
        self,
        transform: Transform,
        *,
        action: RolloutAction,
        actor: str,
        reason: str,
        expected_version: int | None,
        key_id: str | None = None,
        limit: ChangeLimit | None = None,
        environment: tuple[float, str] | None = None,
    ) -> RolloutState:
        """Apply `transform` to the current state; 409-style conflict if the version moved.

        Without `expected_version` (rollback, restore: their target does not depend on what the
        caller saw) a lost race is retried on the fresh state. With `limit`, `key_id`'s recent
        accepted changes are counted in the same transaction, after the write that serialises
        changes: two API processes cannot both admit the last allowed change.
        """
        seen = 0
        for _ in range(CAS_ATTEMPTS):
            current = self.load()
            if current is None:
                raise LookupError("the rollout state is not seeded yet")
            seen = current.version
            if expected_version is not None and current.version != expected_version:
                raise RolloutConflict(expected_version, current.version)
            planned = transform(current)
            if planned is None:
                return current
            target, restore_point = planned
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
                        salt=target.salt,
                        restore_point=dict(restore_point) if restore_point else None,
                        paused=sorted(target.paused),
                        updated_at=now,
                        updated_by=actor,
                    )
                    .returning(_STATE.c.version)
                ).first()
                if matched is not None:
                    if limit is not None and key_id is not None and action in LIMITED_ACTIONS:
                        _check_limit(conn, key_id=key_id, limit=limit, now=now)
                    conn.execute(
                        insert(_EVENTS).values(
                            version=current.version + 1,
                            action=action,
                            actor=actor,
                            reason=reason,
                            before=current.audited(action),
                            after=target.audited(action),
                            at=now,
                            key_id=key_id,
                        )
                    )
                    if environment is not None:
                        _record_environment(conn, environment, current.version + 1, now)
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


def _load(conn: Connection) -> RolloutState | None:
    query = (
        select(_STATE, _EVENTS.c.action)
        .outerjoin(_EVENTS, _EVENTS.c.version == _STATE.c.version)
        .where(_STATE.c.id == _ROW_ID)
    )
    row = conn.execute(query).one_or_none()
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
        source=RolloutAction(values["action"] or RolloutAction.SEED),
        paused=frozenset(values["paused"] or ()),
    )


def _seed(conn: Connection, *, percentage: float, salt: str) -> bool:
    """Insert the first state (version 1) unless one exists; True if this call did."""
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
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    inserted = conn.execute(
        dialect_insert(_STATE).values(values).on_conflict_do_nothing().returning(_STATE.c.id)
    ).first()
    if inserted is None:
        return False
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
    _record_environment(conn, (percentage, salt_digest(salt)), 1, now)
    return True


def _record_environment(
    conn: Connection, environment: tuple[float, str], version: int, now: datetime
) -> None:
    percentage, digest = environment
    conn.execute(
        insert(_ENVIRONMENT).values(
            percentage=percentage, salt_digest=digest, applied_version=version, applied_at=now
        )
    )


def _check_limit(conn: Connection, *, key_id: str, limit: ChangeLimit, now: datetime) -> None:
    since = now - timedelta(seconds=limit.window_seconds)
    counted = (
        select(_EVENTS.c.at)
        .where(
            _EVENTS.c.key_id == key_id,
            _EVENTS.c.action.in_([a.value for a in LIMITED_ACTIONS]),
            _EVENTS.c.at > since,
        )
        .order_by(_EVENTS.c.at.desc())
    )
    # The change that frees a slot is the oldest of the newest `changes` in the window.
    frees: datetime | None = conn.execute(
        counted.limit(1).offset(limit.changes - 1)
    ).scalar_one_or_none()
    if frees is None:
        return
    wait = (frees + timedelta(seconds=limit.window_seconds) - now).total_seconds()
    raise RolloutRateLimited(limit, max(wait, 0.0))


def _adopt_environment(percentage: float | None, salt: str | None) -> Transform:
    def apply(current: RolloutState) -> tuple[RolloutState, Mapping[str, Any] | None]:
        salted = current if salt is None else replace(current, salt=salt)
        if percentage is None:
            return salted, current.restore_point
        if current.rolled_back:
            # A rollback stays in force: the new value is where `restore` will return to.
            assert current.restore_point is not None
            return salted, {**current.restore_point, "percentage": percentage}
        return replace(salted, percentage=percentage), None

    return apply


def _environment_reason(wanted: tuple[float, str], known: list[tuple[float, str]]) -> str:
    percentage, digest = wanted
    if not known:
        return f"CELERY_ROLLOUT_PERCENTAGE={percentage:g} adopted from the environment"
    last_percentage, last_digest = known[0]
    parts = []
    if percentage != last_percentage:
        parts.append(
            f"CELERY_ROLLOUT_PERCENTAGE changed from {last_percentage:g} to {percentage:g}"
        )
    if digest != last_digest:
        parts.append("ROLLOUT_SALT changed")
    return " and ".join(parts) + " in the environment of a new process: adopted"
