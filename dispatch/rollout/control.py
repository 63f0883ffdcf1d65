"""Operator changes to the rollout: validated whole before anything is written, then audited."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from dispatch.rollout.pause import pausing, resuming
from dispatch.rollout.policy import BUCKETS, Stickiness, check_percentage, cutoff
from dispatch.rollout.state import RolloutAction, RolloutEvent, RolloutState
from dispatch.rollout.store import ChangeLimit, NothingToRestore, Transform
from dispatch.rollout.watch import RolloutWatcher
from execution.status import BackendName
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry

MAX_REASON = 500


class Reclaimer(Protocol):
    """Moves tasks still QUEUED on Celery back to threads (the dispatcher does)."""

    def reclaim(self, *, tool_id: str | None, reason: str) -> int: ...


class Releaser(Protocol):
    """Hands the tasks held while a tool was paused to their backends (the dispatcher does)."""

    def release(self, *, tool_id: str | None) -> int: ...


class RolloutInvalid(ValueError):
    """A requested change names a bad value; `field` says which. Nothing was written."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True, slots=True)
class RolloutChange:
    """What PUT /rollout asks for; a field left None stays as it is."""

    percentage: float | None = None
    tool_overrides: Mapping[str, float] | None = None
    stickiness: Stickiness | None = None


@dataclass(frozen=True, slots=True)
class RolloutPreview:
    """What a percentage would change, before anyone commits to it."""

    current_percentage: float
    proposed_percentage: float
    new_traffic_moving: float
    """Percentage points of new tasks (of tools without an override) that would change backend."""
    direction: str
    queued: Mapping[str, int]
    """QUEUED tasks per backend now."""
    queued_that_would_move: int
    """QUEUED Celery tasks that would be handed back to threads (their tool would get 0 %)."""


@dataclass(frozen=True, slots=True)
class RollbackOutcome:
    """The rollout after a rollback, and how many QUEUED Celery tasks moved to threads."""

    state: RolloutState
    reclaimed: int


@dataclass(frozen=True, slots=True)
class ResumeOutcome:
    """The rollout after a resume, and how many held tasks this process handed over."""

    state: RolloutState
    released: int


class RolloutControl:
    """The one place rollout changes are made: API and CLI both come through here."""

    def __init__(
        self,
        *,
        watcher: RolloutWatcher,
        registry: ToolRegistry,
        tasks: TaskStore,
        limit: ChangeLimit | None = None,
        reclaimer: Reclaimer | None = None,
        releaser: Releaser | None = None,
    ) -> None:
        self._store = watcher.store  # the watcher adopts at once what is written here
        self._watcher = watcher
        self._registry = registry
        self._tasks = tasks
        self._limit = limit
        self._reclaimer = reclaimer
        self._releaser = releaser

    def set(
        self,
        change: RolloutChange,
        *,
        actor: str,
        reason: str,
        expected_version: int | None,
        key_id: str | None = None,
        action: RolloutAction = RolloutAction.SET,
    ) -> RolloutState:
        """Apply a change made against `expected_version`; RolloutConflict if it moved, and
        RolloutRateLimited if `key_id` made its allowance of changes (the refusal counts for
        nothing)."""
        reason = _reason(reason)
        if change.percentage is not None:
            _percentage("percentage", change.percentage)
        if change.tool_overrides is not None:
            for tool_id, share in change.tool_overrides.items():
                if tool_id not in self._registry:
                    known = ", ".join(self._registry)
                    raise RolloutInvalid(
                        "tool_overrides", f"unknown tool {tool_id!r}; known tools: {known}"
                    )
                _percentage(f"tool_overrides.{tool_id}", share)

        def apply(current: RolloutState) -> tuple[RolloutState, Mapping[str, Any] | None]:
            target = replace(
                current,
                percentage=current.percentage if change.percentage is None else change.percentage,
                tool_overrides=current.tool_overrides
                if change.tool_overrides is None
                else dict(change.tool_overrides),
                stickiness=current.stickiness if change.stickiness is None else change.stickiness,
            )
            return target, None  # a deliberate setting replaces any pending restore point

        return self._apply(apply, action, actor, reason, expected_version, key_id=key_id)

    def rollback(self, *, actor: str, reason: str, tool_id: str | None = None) -> RollbackOutcome:
        """Everything (or one tool) to threads at once, and the tasks still QUEUED on Celery
        with it; remember the routing before the first rollback for `restore`.

        Never refused: no version to match, no rate limit, and the same rollback twice leaves
        the same routing (each is still recorded)."""
        reason = _reason(reason)
        self._known(tool_id)

        def apply(current: RolloutState) -> tuple[RolloutState, Mapping[str, Any] | None]:
            # A rollback in force keeps its restore point: restore goes back to before the
            # first one, however many rollbacks (global or per tool) followed.
            memory = current.restore_point if current.rolled_back else current.routing()
            if tool_id is None:
                return replace(current, percentage=0.0, tool_overrides={}), memory
            overrides = {**current.tool_overrides, tool_id: 0.0}
            return replace(current, tool_overrides=overrides), memory

        state = self._apply(apply, RolloutAction.ROLLBACK, actor, reason, None)
        reclaimed = 0
        if self._reclaimer is not None:
            reclaimed = self._reclaimer.reclaim(
                tool_id=tool_id, reason=f"rollback by {actor} (version {state.version})"
            )
        return RollbackOutcome(state=state, reclaimed=reclaimed)

    def restore(self, *, actor: str, reason: str) -> RolloutState:
        """Return to where the last rollback found the rollout."""
        reason = _reason(reason)

        def apply(current: RolloutState) -> tuple[RolloutState, Mapping[str, Any] | None]:
            if current.restore_point is None:
                raise NothingToRestore("no rollback to restore from: the rollout is as it was set")
            return current.with_routing(current.restore_point), None

        return self._apply(apply, RolloutAction.RESTORE, actor, reason, None)

    def pause(
        self, *, tool_id: str | None, actor: str, reason: str, key_id: str | None = None
    ) -> RolloutState:
        """Hold the new tasks of `tool_id` (None: of every tool) QUEUED, in every process
        within ROLLOUT_REFRESH_SECONDS; what was handed over already does not start either.
        Never refused by the change limit; pausing what is paused writes nothing."""
        reason = _reason(reason)
        self._known(tool_id)
        return self._apply(
            pausing(tool_id), RolloutAction.PAUSE, actor, reason, None, key_id=key_id
        )

    def resume(
        self, *, tool_id: str | None, actor: str, reason: str, key_id: str | None = None
    ) -> ResumeOutcome:
        """Dispatch `tool_id` (None: every tool) again, and hand its held tasks to their
        backends at once, highest priority first; other processes' sweeps take what this one
        cannot. ResumeRefused for one tool while every tool is paused."""
        reason = _reason(reason)
        self._known(tool_id)
        state = self._apply(
            resuming(tool_id), RolloutAction.RESUME, actor, reason, None, key_id=key_id
        )
        released = self._releaser.release(tool_id=tool_id) if self._releaser else 0
        return ResumeOutcome(state=state, released=released)

    def history(self, *, limit: int, offset: int) -> list[RolloutEvent]:
        """Accepted changes, newest first."""
        return self._store.history(limit=limit, offset=offset)

    def preview(self, percentage: float) -> RolloutPreview:
        """How much new traffic and how many queued tasks a percentage would move."""
        _percentage("percentage", percentage)
        state = self._store.load()
        current = state.percentage if state else 0.0
        overrides = state.tool_overrides if state else {}
        # Whole buckets, as routing counts them (0.01 % resolution).
        moving = abs(cutoff(percentage) - cutoff(current)) * 100 / BUCKETS
        queued = self._tasks.queued_counts()
        would_move = 0
        if percentage == 0:
            would_move = sum(
                count
                for (backend, tool_id), count in queued.items()
                if backend == BackendName.CELERY and not overrides.get(tool_id)
            )
        per_backend: dict[str, int] = {}
        for (backend, _), count in queued.items():
            per_backend[backend] = per_backend.get(backend, 0) + count
        return RolloutPreview(
            current_percentage=current,
            proposed_percentage=percentage,
            new_traffic_moving=moving,
            direction="to celery"
            if percentage > current
            else ("to threads" if percentage < current else "none"),
            queued=per_backend,
            queued_that_would_move=would_move,
        )

    def _known(self, tool_id: str | None) -> None:
        if tool_id is not None and tool_id not in self._registry:
            known = ", ".join(self._registry)
            raise RolloutInvalid("tool_id", f"unknown tool {tool_id!r}; known tools: {known}")

    def _apply(
        self,
        transform: Transform,
        action: RolloutAction,
        actor: str,
        reason: str,
        expected_version: int | None,
        *,
        key_id: str | None = None,
    ) -> RolloutState:
        state = self._store.change(
            transform,
            action=action,
            actor=actor,
            reason=reason,
            expected_version=expected_version,
            key_id=key_id,
            limit=self._limit,
        )
        self._watcher.adopt(state)  # this process routes by it at once, not at the next poll
        return state


def _reason(reason: str) -> str:
    cleaned = reason.strip()
    if not cleaned:
        raise RolloutInvalid("reason", "a reason is required for every rollout change")
    if len(cleaned) > MAX_REASON:
        raise RolloutInvalid("reason", f"at most {MAX_REASON} characters")
    return cleaned


def _percentage(field: str, value: float) -> None:
    try:
        check_percentage(value)
    except ValueError as exc:
        raise RolloutInvalid(field, str(exc)) from None
