"""The composition root: builds every component from one Settings object, starts and stops them."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from sqlalchemy import Engine

from api.keys import KeyStore
from api.ratelimit import SlidingWindowLimiter
from backends.base import TaskBackend
from backends.registry import build_backends
from dispatch.dispatcher import Dispatcher
from dispatch.router import RolloutPolicy, RolloutSource, StaticRollout
from execution import database
from execution.executor import ExecutorLimits, TaskExecutor
from execution.settings import Settings
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry, load_registry

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
    keys: KeyStore
    rollout_change_limiter: SlidingWindowLimiter

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        backends: dict[str, TaskBackend] | None = None,
        registry: ToolRegistry | None = None,
    ) -> Runtime:
        """Wire the components; `backends`/`registry` replace the real ones in tests."""
        engine = database.make_engine(settings.database_url)
        store = TaskStore(engine)
        registry = registry or load_registry(settings.tool_modules)
        executor = TaskExecutor(
            store=store,
            registry=registry,
            data_dir=settings.switchyard_data_dir,
            limits=ExecutorLimits(soft_time_limit=settings.celery_task_soft_time_limit),
        )
        if backends is None:
            backends = build_backends(settings, executor)
        rollout = StaticRollout(
            RolloutPolicy(
                use_celery=settings.use_celery,
                percentage=settings.celery_rollout_percentage,
                salt=settings.rollout_salt,
            )
        )
        dispatcher = Dispatcher(store=store, registry=registry, backends=backends, rollout=rollout)
        return cls(
            settings=settings,
            engine=engine,
            store=store,
            registry=registry,
            executor=executor,
            backends=backends,
            rollout=rollout,
            dispatcher=dispatcher,
            keys=KeyStore(engine),
            rollout_change_limiter=SlidingWindowLimiter(
                limit=settings.rollout_change_limit, window=settings.rollout_change_window_seconds
            ),
        )

    def prepare_database(self) -> None:
        """Migrate the embedded database; refuse to start on an outdated external one."""
        database.prepare(self.engine, migrate=self.settings.is_embedded_database)

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
