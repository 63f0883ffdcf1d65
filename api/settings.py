"""The API's own settings, and `Settings`: every group joined into the object a process loads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator

from backends.settings import BackendSettings
from dispatch.rollout.settings import RolloutCheckSettings, RolloutSettings
from dispatch.settings import DispatchSettings, RecoverySettings
from execution.redaction import redact_url
from execution.settings import (
    ExecutionSettings,
    RetentionSettings,
    SettingsGroup,
    load,
    split_list,
)

BATCH_ITEMS_CEILING = 10_000
"""The most BATCH_MAX_ITEMS may allow: also the bound the batch schema publishes."""

_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")


class ApiSettings(SettingsGroup):
    """HTTP only: where to listen, what requests may hold, who may call, how often."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    operator_key_file: Path = Path(".switchyard/operator.key")
    """Where `serve` writes the first operator key (mode 0600) when the database has no keys."""
    max_request_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    """Larger request bodies are refused with 413 before any handler reads them."""
    cors_origins: str = ""
    """Comma-separated browser origins allowed to call the API; empty turns CORS off."""
    rollout_change_limit: Annotated[int, Field(ge=1, le=1000)] = 10
    """How many rollout changes one API key may make per ROLLOUT_CHANGE_WINDOW_SECONDS."""
    rollout_change_window_seconds: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    batch_max_items: Annotated[int, Field(ge=1, le=BATCH_ITEMS_CEILING)] = 500
    """Items one POST /tasks/batch may hold; MAX_REQUEST_BYTES bounds its body as well."""

    @field_validator("cors_origins")
    @classmethod
    def _explicit_origins(cls, value: str) -> str:
        for origin in split_list(value):
            if origin == "*":
                raise ValueError("'*' is not allowed; list each origin (https://app.example.com)")
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com:8443")
        return value

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        """Origins named in CORS_ORIGINS (comma-separated); empty means no CORS at all."""
        return split_list(self.cors_origins)


class Settings(
    ApiSettings,
    RolloutSettings,
    RolloutCheckSettings,
    DispatchSettings,
    RecoverySettings,
    BackendSettings,
    RetentionSettings,
    ExecutionSettings,
):
    """Every knob an operator can turn: loaded once per process (API or worker), passed down."""

    def redacted(self) -> dict[str, object]:
        """Settings safe to print: credentials in URLs are masked."""
        shown = self.model_dump()
        for key in ("database_url", "redis_url", "celery_broker_url"):
            if shown.get(key):
                shown[key] = redact_url(str(shown[key]))
        return shown


def load_settings(env_file: Path | str | None = ".env", **overrides: Any) -> Settings:
    """The settings from the environment and `.env` (`overrides`, by field name, win over
    both); SettingsError names a bad one in a line."""
    return load(Settings, env_file, **overrides)
