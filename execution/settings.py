"""Switchyard settings: one object, read from the environment and `.env`, built once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from execution.redaction import redact_text, redact_url

_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?")


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


class SettingsError(Exception):
    """A setting has a bad value; the message names it in one line."""


class Settings(BaseSettings):
    """Every knob an operator can turn. Field names are the env var names, lower-cased."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    database_url: str = "sqlite:///./switchyard.db"
    use_celery: bool = False
    celery_rollout_percentage: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 0.0
    rollout_salt: Annotated[str, Field(min_length=1)] = "switchyard"
    background_workers: Annotated[int, Field(ge=1, le=256)] = 8
    background_queue_size: Annotated[int, Field(ge=1)] = 10_000
    thread_sweep_seconds: Annotated[float, Field(gt=0, le=300)] = 2.0
    rollout_refresh_seconds: Annotated[float, Field(ge=0.05, le=10)] = 0.5
    shutdown_timeout: Annotated[float, Field(ge=0)] = 30.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    celery_broker_url: str | None = None
    celery_worker_concurrency: Annotated[int, Field(ge=1, le=256)] = 2
    celery_task_time_limit: Annotated[int, Field(ge=1)] = 1800
    celery_task_soft_time_limit: Annotated[int, Field(ge=1)] = 1500
    celery_visibility_timeout: Annotated[int, Field(ge=1)] = 3600
    celery_publish_retries: Annotated[int, Field(ge=0, le=10)] = 2
    switchyard_tools: Annotated[str, Field(min_length=1)] = "execution.tools.builtin"
    switchyard_data_dir: Path = Path("./data")
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    log_level: str = "INFO"
    log_json: bool = False
    operator_key_file: Path = Path(".switchyard/operator.key")
    """Where `serve` writes the first operator key (mode 0600) when the database has no keys."""
    max_request_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    """Larger request bodies are refused with 413 before any handler reads them."""
    cors_origins: str = ""
    """Comma-separated browser origins allowed to call the API; empty turns CORS off."""
    rollout_change_limit: Annotated[int, Field(ge=1, le=1000)] = 10
    """How many rollout changes one API key may make per ROLLOUT_CHANGE_WINDOW_SECONDS."""
    rollout_change_window_seconds: Annotated[float, Field(gt=0, le=86_400)] = 60.0

    @field_validator("use_celery", "log_json", mode="before")
    @classmethod
    def _strict_bool(cls, value: object) -> object:
        # Pydantic accepts "on"/"y"/"1"; operators reading a runbook expect true/false only.
        if isinstance(value, str) and value.strip().lower() not in {"true", "false", "1", "0"}:
            raise ValueError(f"{value!r} is not a boolean; use true or false")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite", "postgresql")):
            raise ValueError(f"{redact_url(value)!r} is not a sqlite:// or postgresql:// URL")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"{value!r} is not one of DEBUG, INFO, WARNING, ERROR")
        return level

    @field_validator("cors_origins")
    @classmethod
    def _explicit_origins(cls, value: str) -> str:
        for origin in _split(value):
            if origin == "*":
                raise ValueError("'*' is not allowed; list each origin (https://app.example.com)")
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin like https://app.example.com:8443")
        return value

    @model_validator(mode="after")
    def _limits_are_consistent(self) -> Self:
        if self.celery_task_soft_time_limit > self.celery_task_time_limit:
            raise ValueError(
                f"CELERY_TASK_SOFT_TIME_LIMIT ({self.celery_task_soft_time_limit}) must not "
                f"exceed CELERY_TASK_TIME_LIMIT ({self.celery_task_time_limit})"
            )
        if self.celery_visibility_timeout <= self.celery_task_time_limit:
            raise ValueError(
                f"CELERY_VISIBILITY_TIMEOUT ({self.celery_visibility_timeout}) must exceed "
                f"CELERY_TASK_TIME_LIMIT ({self.celery_task_time_limit}), or Redis redelivers "
                "tasks that are still running"
            )
        return self

    @property
    def broker_url(self) -> str:
        """The Celery broker: CELERY_BROKER_URL, falling back to REDIS_URL."""
        return self.celery_broker_url or self.redis_url

    @property
    def tool_modules(self) -> tuple[str, ...]:
        """Modules named in SWITCHYARD_TOOLS (comma-separated)."""
        return _split(self.switchyard_tools)

    @property
    def cors_origin_list(self) -> tuple[str, ...]:
        """Origins named in CORS_ORIGINS (comma-separated); empty means no CORS at all."""
        return _split(self.cors_origins)

    @property
    def is_embedded_database(self) -> bool:
        """True for SQLite, which Switchyard migrates itself on start."""
        return self.database_url.startswith("sqlite")

    def startup_warnings(self) -> list[str]:
        """Configurations that are valid but almost certainly not what the operator meant."""
        warnings = []
        if self.use_celery and self.celery_rollout_percentage == 0:
            warnings.append(
                "USE_CELERY=true but CELERY_ROLLOUT_PERCENTAGE=0: "
                "NO task will go to Celery; every task runs on threads"
            )
        return warnings

    def redacted(self) -> dict[str, object]:
        """Settings safe to print: credentials in URLs are masked."""
        shown = self.model_dump()
        for key in ("database_url", "redis_url", "celery_broker_url"):
            if shown.get(key):
                shown[key] = redact_url(str(shown[key]))
        return shown


def load_settings(env_file: Path | str | None = ".env") -> Settings:
    """Build the settings, turning a validation failure into one line naming the setting."""
    try:
        return Settings(_env_file=env_file)
    except ValidationError as exc:
        raise SettingsError(_one_line(exc)) from None


def _one_line(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        name = "_".join(str(part) for part in error["loc"]).upper()
        reason = error["msg"].removeprefix("Value error, ")
        given = error.get("input")
        if name:
            shown = f" (got {given!r})" if isinstance(given, str | int | float) else ""
            problems.append(f"{name}: {reason}{shown}")
        else:
            problems.append(reason)
    # The rejected input is echoed back, so a bad URL's password would be too.
    return redact_text("invalid setting: " + "; ".join(problems))
