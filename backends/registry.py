"""Backends by name: the one place that knows which class serves `tasks.backend` values."""

from __future__ import annotations

from collections.abc import Callable

from backends.base import TaskBackend
from backends.celery_app import make_celery_app
from backends.celery_backend import CeleryBackend
from backends.settings import BackendSettings
from backends.thread_pool import ThreadPoolBackend
from execution.executor import TaskExecutor
from execution.status import BackendName

BackendFactory = Callable[[BackendSettings, TaskExecutor], TaskBackend]


def _thread(settings: BackendSettings, executor: TaskExecutor) -> TaskBackend:
    return ThreadPoolBackend(
        executor=executor,
        workers=settings.background_workers,
        capacity=settings.background_queue_size,
        sweep_interval=settings.thread_sweep_seconds,
    )


def _celery(settings: BackendSettings, executor: TaskExecutor) -> TaskBackend:
    return CeleryBackend(
        app=make_celery_app(settings, executor.registry),
        registry=executor.registry,
        publish_retries=settings.celery_publish_retries,
    )


FACTORIES: dict[str, BackendFactory] = {BackendName.THREAD: _thread, BackendName.CELERY: _celery}


def build_backend(name: str, settings: BackendSettings, executor: TaskExecutor) -> TaskBackend:
    """The backend registered under `name`, built from its settings."""
    return FACTORIES[name](settings, executor)
