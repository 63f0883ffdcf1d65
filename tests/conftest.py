"""Shared fixtures: each yields a fresh thing (database, store, registry, runtime) and cleans up."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.runtime import Runtime
from api.settings import Settings
from backends.testing import InlineBackend
from backends.thread_pool import ThreadPoolBackend
from execution.database import make_engine, upgrade
from execution.executor import TaskExecutor
from execution.store import TaskStore
from execution.time_limits import SoftTimeLimit
from execution.tools.registry import ToolRegistry
from tests.helpers import operator_client
from tests.tools import Gate, build_registry, wake_hung_threads

ThreadBackendFactory = Callable[..., ThreadPoolBackend]


@pytest.fixture(autouse=True)
def no_hung_thread_outlives_its_test() -> Iterator[None]:
    """A `hangs` task's abandoned thread would wake in a later test and log into its output."""
    yield
    wake_hung_threads()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No Switchyard variable from the caller's environment, and no `.env` in the working dir."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """A SQLite file of this test's own."""
    return f"sqlite:///{tmp_path / 'switchyard.db'}"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """A migrated, empty status store."""
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> TaskStore:
    """The store over this test's database."""
    return TaskStore(engine)


@pytest.fixture
def gate() -> Iterator[Gate]:
    """A closed gate; opened at teardown so no worker thread stays blocked."""
    gate = Gate()
    yield gate
    gate.open()


@pytest.fixture
def registry(gate: Gate) -> ToolRegistry:
    """Built-in tools plus the test tools of tests/tools.py."""
    return build_registry(gate)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """SWITCHYARD_DATA_DIR for this test."""
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def executor(store: TaskStore, registry: ToolRegistry, data_dir: Path) -> TaskExecutor:
    """An executor with the default limits and the hooks production runs with."""
    return TaskExecutor(store=store, registry=registry, data_dir=data_dir, hooks=(SoftTimeLimit(),))


@pytest.fixture
def thread_backends(executor: TaskExecutor, gate: Gate) -> Iterator[ThreadBackendFactory]:
    """Build started thread pools (keyword arguments as ThreadPoolBackend); all stop at teardown."""
    started: list[ThreadPoolBackend] = []

    def build(*, workers: int = 2, capacity: int = 100) -> ThreadPoolBackend:
        backend = ThreadPoolBackend(executor=executor, workers=workers, capacity=capacity)
        backend.start()
        started.append(backend)
        return backend

    yield build
    gate.open()
    for backend in started:
        backend.shutdown(timeout=10)


@pytest.fixture
def settings(clean_env: None, database_url: str, data_dir: Path) -> Settings:
    """Defaults, except a database and data directory of this test's own."""
    return Settings(
        _env_file=None,
        database_url=database_url,
        switchyard_data_dir=data_dir,
        background_workers=2,
        shutdown_timeout=10,
    )


@pytest.fixture
def runtime(
    settings: Settings, engine: Engine, registry: ToolRegistry, executor: TaskExecutor
) -> Runtime:
    """The API's runtime with an inline thread backend: a task has ended when POST returns."""
    return Runtime.build(settings, backends={"thread": InlineBackend(executor)}, registry=registry)


@pytest.fixture
def client(runtime: Runtime) -> Iterator[TestClient]:
    """An HTTP client of the app carrying an operator key; startup and shutdown run around it."""
    with operator_client(runtime) as client:
        yield client


@pytest.fixture
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Let a test call configure_logging; the process's logging is put back afterwards."""
    root, alembic = logging.getLogger(), logging.getLogger("alembic")
    handlers, level, alembic_level = root.handlers[:], root.level, alembic.level
    config = structlog.get_config()
    configure = structlog.configure

    def configure_uncached(**settings: Any) -> None:
        # A logger cached now would keep this test's processors for the rest of the run.
        configure(**{**settings, "cache_logger_on_first_use": False})

    monkeypatch.setattr(structlog, "configure", configure_uncached)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    alembic.setLevel(alembic_level)
    configure(**config)
