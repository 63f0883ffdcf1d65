"""The rollout's settings: the master switch, the starting percentage, the salt, the refresh."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from dispatch.rollout.policy import Percentage
from execution.settings import SettingsGroup, strict_bool


class RolloutSettings(SettingsGroup):
    """USE_CELERY is per process; the percentage only seeds the stored rollout on first start."""

    use_celery: bool = False
    celery_rollout_percentage: Percentage = 0.0
    rollout_salt: Annotated[str, Field(min_length=1)] = "switchyard"
    rollout_refresh_seconds: Annotated[float, Field(ge=0.05, le=10)] = 0.5

    _use_celery_strict = field_validator("use_celery", mode="before")(strict_bool)

    def startup_warnings(self) -> list[str]:
        """Configurations that are valid but almost certainly not what the operator meant."""
        warnings = []
        if self.use_celery and self.celery_rollout_percentage == 0:
            warnings.append(
                "USE_CELERY=true but CELERY_ROLLOUT_PERCENTAGE=0: "
                "NO task will go to Celery; every task runs on threads"
            )
        return warnings
