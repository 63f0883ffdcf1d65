"""Rollout state: stored once in the database, changed by operators, read by every process."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from execution.status import BackendName

BUCKETS = 10_000
"""0.01 % resolution: a percentage p covers buckets [0, p * 100)."""


def cutoff(share: float) -> tuple[float, int]:
    """A percentage and the number of buckets it covers (rounded to whole buckets)."""
    if not 0 <= share <= 100:
        raise ValueError(f"percentage {share} is outside 0-100")
    return share, round(share * BUCKETS / 100)


class Stickiness(StrEnum):
    """What the rollout bucket is computed from."""

    TASK_ID = "task_id"
    """Each task is bucketed on its own: an even spread."""
    USER_ID = "user_id"
    """All of one user's tasks land on the same backend."""


class RolloutAction(StrEnum):
    """Why the rollout state changed."""

    SEED = "seed"
    """First start: the state was taken from the environment."""
    SET = "set"
    """An operator set a percentage, overrides or stickiness."""
    ROLLBACK = "rollback"
    """Everything to 0 %, remembering where it was."""
    RESTORE = "restore"
    """Back to where the last rollback found it."""


def _frozen(overrides: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType(dict(sorted(overrides.items())))


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """Everything a routing decision reads; an immutable snapshot, swapped whole on change."""

    use_celery: bool
    """The master switch (USE_CELERY of this process): false overrides everything stored."""
    percentage: float
    salt: str
    tool_overrides: Mapping[str, float] = field(default_factory=lambda: _frozen({}))
    stickiness: Stickiness = Stickiness.TASK_ID
    version: int = 0

    _cutoffs: Mapping[str | None, tuple[float, int]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    """(share, buckets covered) per tool, and for None: computed once, read per decision."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tool_overrides", _frozen(self.tool_overrides))
        cutoffs: dict[str | None, tuple[float, int]] = {None: cutoff(self.effective_percentage)}
        for tool_id in self.tool_overrides:
            cutoffs[tool_id] = cutoff(self.share_for(tool_id))
        object.__setattr__(self, "_cutoffs", cutoffs)

    def cutoff_for(self, tool_id: str | None) -> tuple[float, int]:
        """The share for a task of `tool_id`, and how many of the 10,000 buckets it covers."""
        return self._cutoffs.get(tool_id) or self._cutoffs[None]

    @property
    def effective_percentage(self) -> float:
        """The share of new tasks (of tools without an override) that go to Celery."""
        return self.percentage if self.use_celery else 0.0

    def share_for(self, tool_id: str | None) -> float:
        """The percentage that applies to a task of `tool_id`."""
        if not self.use_celery:
            return 0.0
        if tool_id is not None and tool_id in self.tool_overrides:
            return self.tool_overrides[tool_id]
        return self.percentage

    def celery_switched_off_for(self, tool_id: str) -> bool:
        """True when no task of this tool may run on Celery now (rollback, override 0, switch)."""
        return self.share_for(tool_id) == 0

    def describe(self) -> str:
        """What this policy means for a new task, in words."""
        if not self.use_celery:
            return "USE_CELERY is false: every new task runs on the thread backend"
        overrides = ", ".join(
            f"{tool} at {share:g}%" for tool, share in self.tool_overrides.items()
        )
        tail = f"; overrides: {overrides}" if overrides else ""
        key = "user id" if self.stickiness is Stickiness.USER_ID else "task id"
        if self.percentage == 0:
            head = "USE_CELERY is true but the percentage is 0: every new task runs on threads"
        elif self.percentage >= 100:
            head = "every new task runs on Celery"
        else:
            head = (
                f"{self.percentage:g}% of new tasks (a stable hash of the {key}) run on Celery, "
                "the rest on threads"
            )
        return head + tail


@dataclass(frozen=True, slots=True)
class RolloutState:
    """The stored rollout (without the master switch, which each process reads from its env)."""

    version: int
    percentage: float
    tool_overrides: Mapping[str, float]
    stickiness: Stickiness
    salt: str
    restore_point: Mapping[str, Any] | None
    updated_at: datetime
    updated_by: str

    def policy(self, *, use_celery: bool) -> RolloutPolicy:
        """The snapshot routing uses, under this process's master switch."""
        return RolloutPolicy(
            use_celery=use_celery,
            percentage=self.percentage,
            salt=self.salt,
            tool_overrides=self.tool_overrides,
            stickiness=self.stickiness,
            version=self.version,
        )

    def routing(self) -> dict[str, Any]:
        """The parts an audit event records before and after a change."""
        return {
            "percentage": self.percentage,
            "tool_overrides": dict(self.tool_overrides),
            "stickiness": str(self.stickiness),
        }

    def with_routing(self, routing: Mapping[str, Any]) -> RolloutState:
        """This state with percentage/overrides/stickiness taken from `routing`."""
        return replace(
            self,
            percentage=float(routing["percentage"]),
            tool_overrides=_frozen(routing["tool_overrides"]),
            stickiness=Stickiness(routing["stickiness"]),
        )


@dataclass(frozen=True, slots=True)
class RolloutEvent:
    """One accepted change, as the history shows it."""

    version: int
    action: RolloutAction
    actor: str
    reason: str
    before: Mapping[str, Any] | None
    after: Mapping[str, Any]
    at: datetime


BACKEND_WHEN_SWITCHED_OFF = BackendName.THREAD
"""Where a task goes when Celery is switched off for it."""
