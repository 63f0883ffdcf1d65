"""Settings of the dispatcher's recovery: how often it looks for lost or unpublished tasks."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from execution.settings import SettingsGroup


class BrokerDown(StrEnum):
    """What a new task routed to Celery gets while the broker cannot take it."""

    REJECT = "reject"
    """503 with Retry-After; the row ends CANCELLED (REJECTED): the client retries."""
    ACCEPT = "accept"
    """202; the row waits QUEUED, unpublished, and recovery publishes it once the broker is
    back (a transactional outbox)."""
    THREADS = "threads"
    """201 on the thread backend instead; the row's history says why."""


class DispatchSettings(SettingsGroup):
    """How the dispatcher treats a broker that cannot take a task."""

    celery_unavailable: BrokerDown = BrokerDown.REJECT


class RecoverySettings(SettingsGroup):
    """The recovery sweep runs in every API process and worker; the store arbitrates."""

    recovery_sweep_seconds: Annotated[float, Field(ge=0.1, le=3600)] = 5.0
    celery_republish_seconds: Annotated[float, Field(ge=1)] = 300.0
    """A Celery task QUEUED this long with no claim is published again (the broker may have
    lost it); a duplicate message is harmless, the claim runs it once."""
