"""Routing: compare a task's bucket with the rollout; nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dispatch.bucketing import bucket, threshold
from execution.status import BackendName


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """The rollout as one decision needs it."""

    use_celery: bool
    percentage: float
    salt: str

    @property
    def effective_percentage(self) -> float:
        """What share actually goes to Celery: the master switch overrides the percentage."""
        return self.percentage if self.use_celery else 0.0

    def describe(self) -> str:
        """What this policy means for a new task, in words."""
        if not self.use_celery:
            return "USE_CELERY is false: every new task runs on the thread backend"
        if self.percentage == 0:
            return "USE_CELERY is true but the percentage is 0: every new task runs on threads"
        if self.percentage >= 100:
            return "every new task runs on Celery"
        return (
            f"{self.percentage:g}% of new tasks (a stable hash of the task id) run on Celery, "
            "the rest on threads"
        )


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """Where a task goes and why; recorded on its row."""

    backend: BackendName
    bucket: int
    percentage: float


class RolloutSource(Protocol):
    """Where the dispatcher reads the rollout from (settings now, the database later)."""

    def current(self) -> RolloutPolicy: ...


@dataclass(frozen=True, slots=True)
class StaticRollout:
    """A rollout fixed at startup, from settings."""

    policy: RolloutPolicy

    def current(self) -> RolloutPolicy:
        """The policy, unchanged."""
        return self.policy


def route(policy: RolloutPolicy, key: str) -> RoutingDecision:
    """Celery iff the master switch is on and the key's bucket is below the percentage."""
    share = policy.effective_percentage
    slot = bucket(key, salt=policy.salt)
    backend = BackendName.CELERY if slot < threshold(share) else BackendName.THREAD
    return RoutingDecision(backend=backend, bucket=slot, percentage=share)
