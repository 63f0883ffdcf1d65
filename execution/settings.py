"""Settings shared by every process, and the machinery every settings group is built on.

Each room declares the settings it reads (execution here, backends/settings.py,
dispatch/rollout/settings.py, api/settings.py); `api.settings.Settings` joins them into the one
object a process loads once and passes into constructors. Field names are the env var names,
lower-cased.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Self, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from execution.redaction import redact_text, redact_url


class SettingsError(Exception):
    """A setting has a bad value; the message names it in one line."""


def split_list(value: str) -> tuple[str, ...]:
    """A comma-separated setting as its non-empty parts."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


def strict_bool(value: object) -> object:
    """Refuse "on"/"y" (which pydantic accepts): operators reading a runbook expect true/false."""
    if isinstance(value, str) and value.strip().lower() not in {"true", "false", "1", "0"}:
        raise ValueError(f"{value!r} is not a boolean; use true or false")
    return value


class SettingsGroup(BaseSettings):
    """Where every group reads from: the environment, then `.env`; frozen once built."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )


class ExecutionSettings(SettingsGroup):
    """What running a task needs: the status store, the tools, their files, the logs."""

    database_url: str = "sqlite:///./switchyard.db"
    switchyard_tools: Annotated[str, Field(min_length=1)] = "execution.tools.builtin"
    switchyard_data_dir: Path = Path("./data")
    log_level: str = "INFO"
    log_json: bool = False
    task_lease_seconds: Annotated[float, Field(ge=1, le=3600)] = 30.0
    task_heartbeat_seconds: Annotated[float, Field(ge=0.1, le=600)] = 5.0
    task_lost_retries: Annotated[int, Field(ge=0, le=100)] = 2

    _log_json_strict = field_validator("log_json", mode="before")(strict_bool)

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

    @model_validator(mode="after")
    def _heartbeat_fits_the_lease(self) -> Self:
        if self.task_heartbeat_seconds * 2 >= self.task_lease_seconds:
            raise ValueError(
                f"TASK_HEARTBEAT_SECONDS ({self.task_heartbeat_seconds:g}) must be under half of "
                f"TASK_LEASE_SECONDS ({self.task_lease_seconds:g}), or one late heartbeat loses "
                "a running task's lease"
            )
        return self

    @property
    def tool_modules(self) -> tuple[str, ...]:
        """Modules named in SWITCHYARD_TOOLS (comma-separated)."""
        return split_list(self.switchyard_tools)

    @property
    def is_embedded_database(self) -> bool:
        """True for SQLite, which Switchyard migrates itself on start."""
        return self.database_url.startswith("sqlite")


class RetentionSettings(SettingsGroup):
    """How long finished tasks are kept; one process of the deployment prunes at a time."""

    retention_days: Annotated[int, Field(ge=0, le=36_500)] = 30
    """Finished tasks (COMPLETED, FAILED, CANCELLED) unchanged this many days are deleted with
    their events; 0 keeps them forever."""
    retention_sweep_seconds: Annotated[float, Field(ge=1, le=7 * 86_400)] = 3600.0
    """How often the deployment prunes."""
    retention_batch: Annotated[int, Field(ge=1, le=5000)] = 500
    """Tasks deleted per transaction: other writers get their turn between batches."""


S = TypeVar("S", bound=SettingsGroup)


def load(cls: type[S], env_file: Path | str | None = ".env", **overrides: Any) -> S:
    """Build settings of `cls`, turning a validation failure into one line naming the setting;
    `overrides` (field names) win over the environment and `env_file`."""
    try:
        return cls(_env_file=env_file, **overrides)
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
