"""Routing: compare a task's bucket with the share of traffic Celery gets; nothing else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

from dispatch.bucketing import bucket
from execution.rollout import RolloutPolicy
from execution.status import BackendName

# Bound once: an enum member lookup costs about as much as the comparison it feeds.
_CELERY, _THREAD = BackendName.CELERY, BackendName.THREAD

__all__ = ["RolloutPolicy", "RolloutSource", "RoutingDecision", "StaticRollout", "route"]


class RoutingDecision(NamedTuple):
    """Where a task goes and why; recorded on its row. A tuple: built once per task, cheaply."""

    backend: BackendName
    bucket: int
    percentage: float


class RolloutSource(Protocol):
    """Where the dispatcher reads the rollout from; `current()` must not touch the database."""

    def current(self) -> RolloutPolicy: ...


@dataclass(frozen=True, slots=True)
class StaticRollout:
    """A rollout that never changes (tests, benchmarks)."""

    policy: RolloutPolicy

    def current(self) -> RolloutPolicy:
        """The policy, unchanged."""
        return self.policy


def route(policy: RolloutPolicy, key: str, tool_id: str | None = None) -> RoutingDecision:
    """Celery iff the switch is on and the key's bucket is below the tool's share."""
    share, covered = policy.cutoff_for(tool_id)
    slot = bucket(key, salt=policy.salt)
    return RoutingDecision(_CELERY if slot < covered else _THREAD, slot, share)
