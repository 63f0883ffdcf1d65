"""The composition root: builds every component from one Settings object, starts and stops them."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from sqlalchemy import Engine

from backends.base import TaskBackend
from backends.registry import build_backends
from dispatch.dispatcher import Dispatcher
from dispatch.router import RolloutPolicy, RolloutSource, StaticRollout
from execution import database
from execution.executor import TaskExecutor
from execution.settings import Settings
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry
from execution.wiring import build_executor

log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    """Everything the API process runs, wired together."""

    settings: Settings
    engine: Engine
    store: TaskStore
    registry: ToolRegistry
    executor: TaskExecutor
    backends: dict[str, TaskBackend]
    rollout: RolloutSource
    dispatcher: Dispatcher

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        backends: dict[str, TaskBackend] | None = None,
        registry: ToolRegistry | None = None,
    ) -> Runtime:
        """Wire the components; `backends`/`registry` replace the real ones in tests."""
        executor = build_executor(settings, registry=registry)
        store, engine = executor.store, executor.store.engine
        if backends is None:
            backends = build_backends(settings, executor)
        rollout = StaticRollout(
            RolloutPolicy(
                use_celery=settings.use_celery,
                percentage=settings.celery_rollout_percentage,
                salt=settings.rollout_salt,
            )
        )
        dispatcher = Dispatcher(
            store=store, registry=executor.registry, backends=backends, rollout=rollout
        )
        return cls(
            settings, engine, store, executor.registry, executor, backends, rollout, dispatcher
        )

    def prepare_database(self) -> None:
        """Migrate the embedded database; refuse to start on an outdated external one."""
        if self.settings.is_embedded_database:
            database.upgrade(self.engine)
        else:
            database.check_current(self.engine)

    def start(self) -> None:
        """Start every backend."""
        for backend in self.backends.values():
            backend.start()

    def stop(self) -> None:
        """Stop backends (running tasks get SHUTDOWN_TIMEOUT seconds) and close connections."""
        for backend in self.backends.values():
            backend.shutdown(self.settings.shutdown_timeout)
        self.engine.dispose()
        log.info("runtime.stopped")
