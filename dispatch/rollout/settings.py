"""The rollout's settings: the master switch, the starting percentage, the salt, the refresh;
and the schedule, checks and guard of `rollout advance`."""

from __future__ import annotations

import itertools
from typing import Annotated

from pydantic import Field, field_validator

from dispatch.rollout.policy import Percentage, check_percentage
from execution.settings import SettingsGroup, split_list, strict_bool


class RolloutSettings(SettingsGroup):
    """USE_CELERY is per process; percentage and salt reach the stored rollout only when they
    change (RolloutStore.apply_environment)."""

    use_celery: bool = False
    celery_rollout_percentage: Percentage = 0.0
    rollout_salt: Annotated[str, Field(min_length=1)] = "switchyard"
    rollout_refresh_seconds: Annotated[float, Field(ge=0.05, le=10)] = 0.5

    _use_celery_strict = field_validator("use_celery", mode="before")(strict_bool)


def parse_schedule(text: str) -> tuple[float, ...]:
    """ROLLOUT_SCHEDULE as its steps: percentages in 0-100, strictly ascending, at least one."""
    steps = []
    for part in split_list(text):
        try:
            steps.append(check_percentage(float(part)))
        except ValueError:
            raise ValueError(f"{part!r} is not a percentage in 0-100") from None
    if not steps:
        raise ValueError("name at least one step, e.g. 5,25,50,75,100")
    if any(later <= earlier for earlier, later in itertools.pairwise(steps)):
        raise ValueError(f"steps must go up: {text!r}")
    return tuple(steps)


class RolloutCheckSettings(SettingsGroup):
    """The schedule `rollout advance` walks, what it checks first, and the automatic guard."""

    rollout_schedule: str = "5,25,50,75,100"
    rollout_max_failure_delta: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 0.1
    """Percentage points Celery's failure rate may exceed the threads' by."""
    rollout_max_p95_ratio: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] = 1.2
    """How many times the threads' p95 run time Celery's may be."""
    rollout_min_samples: Annotated[int, Field(ge=1, le=1_000_000)] = 100
    """Finished tasks a cohort needs before it is judged."""
    rollout_guard: bool = False
    rollout_guard_interval_seconds: Annotated[float, Field(ge=0.1, le=3600)] = 30.0

    _rollout_guard_strict = field_validator("rollout_guard", mode="before")(strict_bool)

    @field_validator("rollout_schedule")
    @classmethod
    def _valid_schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value

    @property
    def rollout_steps(self) -> tuple[float, ...]:
        """The schedule's percentages, ascending."""
        return parse_schedule(self.rollout_schedule)
