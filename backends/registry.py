"""Backends by name: the one place that knows which class serves `tasks.backend` values."""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from backends.base import TaskBackend
from backends.celery_app import make_celery_app
from backends.celery_backend import CeleryBackend
from backends.settings import BackendSettings
from backends.thread_pool import ThreadPoolBackend
from execution.executor import TaskExecutor
from execution.status import BackendName
from execution.tools.registry import ToolRegistry

BackendFactory = Callable[[BackendSettings, TaskExecutor], TaskBackend]


def _thread(settings: BackendSettings, executor: TaskExecutor) -> TaskBackend:
    return ThreadPoolBackend(
        executor=executor,
        workers=settings.background_workers,
        capacity=settings.background_queue_size,
        sweep_interval=settings.thread_sweep_seconds,
    )


def celery_publisher(
    settings: BackendSettings, app: Celery, registry: ToolRegistry
) -> CeleryBackend:
    """The Celery backend publishing through `app` (a worker's own app, in a worker)."""
    return CeleryBackend(
        app=app, registry=registry, publish_retries=settings.celery_publish_retries
    )


def _celery(settings: BackendSettings, executor: TaskExecutor) -> TaskBackend:
    app = make_celery_app(settings, executor.registry)
    return celery_publisher(settings, app, executor.registry)


FACTORIES: dict[str, BackendFactory] = {BackendName.THREAD: _thread, BackendName.CELERY: _celery}


def build_backend(name: str, settings: BackendSettings, executor: TaskExecutor) -> TaskBackend:
    """The backend registered under `name`, built from its settings."""
    return FACTORIES[name](settings, executor)
