"""The rollout's pure maths: a stable bucket per key, the policy it is compared with, the route.

Nothing here touches a database or a clock. Changing `bucket` moves live traffic between
backends (tests/dispatch/rollout/test_bucketing.py freezes it in a golden table).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, NamedTuple

import xxhash
from pydantic import Field, TypeAdapter, ValidationError

from execution.dispatch_gate import ALL_TOOLS, is_held
from execution.status import BackendName

BUCKETS = 10_000
"""0.01 % resolution: a percentage p covers buckets [0, p * 100)."""

Percentage = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
"""A share of traffic: the one range check, used by settings, the API schema and the control."""
_PERCENTAGE = TypeAdapter(Percentage)

# Bound once: an enum member lookup costs about as much as the comparison it feeds.
_CELERY, _THREAD = BackendName.CELERY, BackendName.THREAD

BACKEND_WHEN_SWITCHED_OFF = BackendName.THREAD
"""Where a task goes when Celery is switched off for it."""


def check_percentage(value: object) -> float:
    """`value` as a percentage, or ValueError saying why (a bool is not a number here)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    try:
        return _PERCENTAGE.validate_python(value, strict=True)
    except ValidationError as exc:
        kind = exc.errors()[0]["type"]
        if kind in ("greater_than_equal", "less_than_equal"):
            raise ValueError(f"{value:g} is outside 0-100") from None
        raise ValueError(f"{value!r} is not a number") from None


def bucket(key: str, *, salt: str) -> int:
    """Map `"{salt}:{key}"` to 0..9999 with xxh3-64 (stable across processes, unlike hash())."""
    if not key:
        raise ValueError("a rollout key is required; an empty key would not be sticky")
    digest: int = xxhash.xxh3_64_intdigest(f"{salt}:{key}".encode())
    return digest % BUCKETS


def cutoff(share: float) -> int:
    """How many of the 10,000 buckets a percentage covers (rounded to whole buckets)."""
    return round(check_percentage(share) * BUCKETS / 100)


class Stickiness(StrEnum):
    """What the rollout bucket is computed from."""

    TASK_ID = "task_id"
    """Each task is bucketed on its own: an even spread."""
    USER_ID = "user_id"
    """All of one user's tasks land on the same backend."""


def frozen_overrides(overrides: Mapping[str, float]) -> Mapping[str, float]:
    """Per-tool shares as a read-only mapping in a stable (sorted) order."""
    return MappingProxyType(dict(sorted(overrides.items())))


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """Everything a routing decision reads; an immutable snapshot, swapped whole on change."""

    use_celery: bool
    """The master switch (USE_CELERY of this process): false overrides everything stored."""
    percentage: float
    salt: str
    tool_overrides: Mapping[str, float] = field(default_factory=lambda: frozen_overrides({}))
    stickiness: Stickiness = Stickiness.TASK_ID
    version: int = 0
    paused: frozenset[str] = frozenset()
    """Tools whose new tasks wait QUEUED instead of being handed over (ALL_TOOLS: all)."""

    _cutoffs: Mapping[str | None, tuple[float, int]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    """(share, buckets covered) per tool, and for None: computed once, read per decision."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tool_overrides", frozen_overrides(self.tool_overrides))
        cutoffs: dict[str | None, tuple[float, int]] = {}
        for tool_id in (None, *self.tool_overrides):
            share = self.share_for(tool_id)
            cutoffs[tool_id] = (share, cutoff(share))
        object.__setattr__(self, "_cutoffs", cutoffs)

    def cutoff_for(self, tool_id: str | None) -> tuple[float, int]:
        """The share for a task of `tool_id`, and how many of the 10,000 buckets it covers."""
        return self._cutoffs.get(tool_id) or self._cutoffs[None]

    @property
    def effective_percentage(self) -> float:
        """The share of new tasks (of tools without an override) that go to Celery."""
        return self.percentage if self.use_celery else 0.0

    @property
    def sends_any_to_celery(self) -> bool:
        """Whether any new task at all can go to Celery under this policy."""
        return self.use_celery and (
            self.percentage > 0 or any(share > 0 for share in self.tool_overrides.values())
        )

    def is_paused(self, tool_id: str) -> bool:
        """Whether a task of `tool_id` must wait QUEUED, not handed to its backend."""
        return is_held(self.paused, tool_id)

    def share_for(self, tool_id: str | None) -> float:
        """The percentage that applies to a task of `tool_id`."""
        if not self.use_celery:
            return 0.0
        if tool_id is not None and tool_id in self.tool_overrides:
            return self.tool_overrides[tool_id]
        return self.percentage

    def reason_for(self, tool_id: str | None) -> str:
        """Why a task of `tool_id` goes where it goes, as the dispatch metric labels it."""
        if not self.use_celery:
            return "switch_off"
        if tool_id is not None and tool_id in self.tool_overrides:
            return "tool_override"
        if self.stickiness is Stickiness.USER_ID:
            return "user_stickiness"
        return "bucket"

    def hand_back_to(self, tool_id: str) -> BackendName | None:
        """Where a Celery task of this tool must go instead (Celery switched off), or None."""
        return BACKEND_WHEN_SWITCHED_OFF if self.share_for(tool_id) == 0 else None

    def describe(self) -> str:
        """What this policy means for a new task, in words."""
        return self._describe_routing() + _describe_pause(self.paused)

    def _describe_routing(self) -> str:
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


def _describe_pause(paused: frozenset[str]) -> str:
    if not paused:
        return ""
    if ALL_TOOLS in paused:
        return "; dispatch is PAUSED for every tool: new tasks wait QUEUED until resumed"
    tools = ", ".join(sorted(paused))
    return f"; dispatch is PAUSED for {tools}: their new tasks wait QUEUED until resumed"


class RoutingDecision(NamedTuple):
    """Where a task goes and why; recorded on its row. A tuple: built once per task, cheaply."""

    backend: BackendName
    bucket: int
    percentage: float


def route(policy: RolloutPolicy, key: str, tool_id: str | None = None) -> RoutingDecision:
    """Celery iff the switch is on and the key's bucket is below the tool's share."""
    share, covered = policy.cutoff_for(tool_id)
    slot = bucket(key, salt=policy.salt)
    return RoutingDecision(_CELERY if slot < covered else _THREAD, slot, share)
