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
from dispatch.rollout_control import RolloutControl
from execution import database
from execution.executor import TaskExecutor
from execution.rollout_store import RolloutStore
from execution.rollout_watch import RolloutWatcher
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
    rollout_store: RolloutStore
    rollout: RolloutWatcher
    dispatcher: Dispatcher
    rollout_control: RolloutControl
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
        executor = build_executor(settings, registry=registry)
        store, engine = executor.store, executor.store.engine
        if backends is None:
            backends = build_backends(settings, executor)
        rollout_store = RolloutStore(engine)
        rollout = RolloutWatcher(
            rollout_store,
            use_celery=settings.use_celery,
            seed_percentage=settings.celery_rollout_percentage,
            salt=settings.rollout_salt,
            interval=settings.rollout_refresh_seconds,
        )
        dispatcher = Dispatcher(
            store=store, registry=executor.registry, backends=backends, rollout=rollout
        )
        return cls(
            settings=settings,
            engine=engine,
            store=store,
            registry=executor.registry,
            executor=executor,
            backends=backends,
            rollout_store=rollout_store,
            rollout=rollout,
            dispatcher=dispatcher,
            rollout_control=RolloutControl(
                store=rollout_store, watcher=rollout, registry=executor.registry, tasks=store
            ),
            keys=KeyStore(engine),
            rollout_change_limiter=SlidingWindowLimiter(
                limit=settings.rollout_change_limit, window=settings.rollout_change_window_seconds
            ),
        )

    def prepare_database(self) -> None:
        """Migrate the embedded database; refuse to start on an outdated external one."""
        database.prepare(self.engine, migrate=self.settings.is_embedded_database)

    def start(self) -> None:
        """Load (or seed) the rollout, then start every backend."""
        self.rollout.start()
        for backend in self.backends.values():
            backend.start()

    def stop(self) -> None:
        """Stop backends (running tasks get SHUTDOWN_TIMEOUT seconds) and close connections."""
        for backend in self.backends.values():
            backend.shutdown(self.settings.shutdown_timeout)
        self.rollout.stop()
        self.engine.dispose()
        log.info("runtime.stopped")
