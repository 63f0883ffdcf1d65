"""Builds a TaskExecutor from settings: the same wiring in the API process and in every worker."""

from __future__ import annotations

from sqlalchemy import Engine

from execution import database
from execution.executor import ExecutorLimits, TaskExecutor
from execution.settings import Settings
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry, load_registry


def build_executor(
    settings: Settings,
    *,
    engine: Engine | None = None,
    registry: ToolRegistry | None = None,
    soft_limit_errors: tuple[type[BaseException], ...] = (),
) -> TaskExecutor:
    """An executor on DATABASE_URL running the tools named by SWITCHYARD_TOOLS."""
    return TaskExecutor(
        store=TaskStore(engine or database.make_engine(settings.database_url)),
        registry=registry or load_registry(settings.tool_modules),
        data_dir=settings.switchyard_data_dir,
        limits=ExecutorLimits(
            soft_time_limit=settings.celery_task_soft_time_limit,
            soft_limit_errors=soft_limit_errors,
        ),
    )
