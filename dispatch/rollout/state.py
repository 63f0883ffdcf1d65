"""The stored rollout, the changes operators make to it, and their audit history."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from dispatch.rollout.policy import RolloutPolicy, Stickiness, frozen_overrides


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
    ENVIRONMENT = "environment"
    """A process started with a CELERY_ROLLOUT_PERCENTAGE (or ROLLOUT_SALT) no process had
    started with before: the new value was adopted."""
    ADVANCE = "advance"
    """An operator moved to the next step of the schedule, after the cohort checks."""
    PAUSE = "pause"
    """An operator paused dispatch of a tool, or of all: new tasks wait QUEUED."""
    RESUME = "resume"
    """An operator resumed dispatch: the waiting tasks were handed to their backends."""


LIMITED_ACTIONS = (RolloutAction.SET, RolloutAction.ADVANCE)
"""The changes the per-key limit counts and refuses; rollback, restore, pause and resume are
never refused."""
PAUSE_ACTIONS = (RolloutAction.PAUSE, RolloutAction.RESUME)
"""The changes whose audit event records the paused tools besides the routing."""


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
    source: RolloutAction = RolloutAction.SEED
    """What made this version: the environment (seed, environment) or an operator."""
    paused: frozenset[str] = frozenset()
    """Tools whose dispatch is paused ("*": all). Not part of the routing: a rollback or
    restore neither pauses nor resumes anything."""

    @property
    def rolled_back(self) -> bool:
        """A rollback is in force: only a rollback leaves a restore point, every other change
        clears it."""
        return self.restore_point is not None

    def policy(self, *, use_celery: bool) -> RolloutPolicy:
        """The snapshot routing uses, under this process's master switch."""
        return RolloutPolicy(
            use_celery=use_celery,
            percentage=self.percentage,
            salt=self.salt,
            tool_overrides=self.tool_overrides,
            stickiness=self.stickiness,
            version=self.version,
            paused=self.paused,
        )

    def routing(self) -> dict[str, Any]:
        """The parts an audit event records before and after a change."""
        return {
            "percentage": self.percentage,
            "tool_overrides": dict(self.tool_overrides),
            "stickiness": str(self.stickiness),
        }

    def audited(self, action: RolloutAction) -> dict[str, Any]:
        """What an audit event of `action` records of this state: the routing, and for a
        pause or resume the paused tools too."""
        if action in PAUSE_ACTIONS:
            return {**self.routing(), "paused": sorted(self.paused)}
        return self.routing()

    def with_routing(self, routing: Mapping[str, Any]) -> RolloutState:
        """This state with percentage/overrides/stickiness taken from `routing`."""
        return replace(
            self,
            percentage=float(routing["percentage"]),
            tool_overrides=frozen_overrides(routing["tool_overrides"]),
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
