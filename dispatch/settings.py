"""Settings of the dispatcher's recovery: how often it looks for lost or unpublished tasks."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from execution.settings import SettingsGroup


class RecoverySettings(SettingsGroup):
    """The recovery sweep runs in every API process and worker; the store arbitrates."""

    recovery_sweep_seconds: Annotated[float, Field(ge=0.1, le=3600)] = 5.0
    celery_republish_seconds: Annotated[float, Field(ge=1)] = 300.0
    """A Celery task QUEUED this long with no claim is published again (the broker may have
    lost it); a duplicate message is harmless, the claim runs it once."""
