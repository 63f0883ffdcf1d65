"""The servers and worker processes a run needs, each stopped when its scope closes.

Redis and `switchyard worker` come from the integration tests' helpers, so the benchmarks start
them exactly as the tests do; only what the tests have no use for (a plain `celery worker`, a
uvicorn server) is started here.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
from celery import Celery

from tests.integration.servers import (
    REDIS_DATABASES,
    PostgresServer,
    RedisServer,
    free_port,
    start_postgres,
    start_redis,
)
from tests.integration.workers import REPO_ROOT, WorkerProcess, start_worker

READY_TIMEOUT = 60.0
Store = Literal["sqlite", "postgresql"]
STORES: tuple[Store, ...] = ("sqlite", "postgresql")
STORE_NAMES: dict[Store, str] = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
"""How the table names each store."""


class ServiceFailed(RuntimeError):
    """A server or worker would not start; the message points at its log."""


@dataclass
class _Shared:
    """What lives for the whole run: the work directory, one redis-server, one PostgreSQL."""

    workdir: Path
    stack: ExitStack
    redis: RedisServer | None = None
    databases: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    postgres: PostgresServer | None = None
    servers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)


class Services:
    """Starts servers and workers; everything started through a scope stops when it closes."""

    def __init__(self, shared: _Shared, stack: ExitStack) -> None:
        self._shared = shared
        self._stack = stack

    @classmethod
    @contextmanager
    def for_run(cls, workdir: Path) -> Iterator[Services]:
        """The root scope of a run; closing it stops Redis too."""
        with ExitStack() as stack:
            yield cls(_Shared(workdir, stack), stack)

    @contextmanager
    def scope(self) -> Iterator[Services]:
        """A child scope: what it starts stops when the `with` block ends, even on Ctrl-C."""
        with ExitStack() as stack:
            yield Services(self._shared, stack)

    @property
    def workdir(self) -> Path:
        """Databases, logs and sockets of this run."""
        return self._shared.workdir

    def redis_url(self) -> str:
        """A Redis database nobody else in this run uses, on the run's one redis-server."""
        shared = self._shared
        if shared.redis is None:
            (shared.workdir / "redis").mkdir(exist_ok=True)
            shared.redis = start_redis(shared.workdir / "redis")
            shared.stack.callback(shared.redis.stop)
        number = next(shared.databases)
        if number >= REDIS_DATABASES:
            raise ServiceFailed("this run asked for more Redis databases than redis-server has")
        return f"redis://127.0.0.1:{shared.redis.port}/{number}"

    def database_url(self, store: Store, name: str) -> str:
        """A fresh, empty database called `name` in `store`: a file, or one on the run's server.

        The PostgreSQL 15 cluster is started on first use, as the integration tests start it
        (fsync off: the figures compare code paths, not disks), and stopped with the run.
        """
        if store == "sqlite":
            path = self.workdir / f"{name}.db"
            path.unlink(missing_ok=True)
            return f"sqlite:///{path}"
        shared = self._shared
        if shared.postgres is None:
            shared.postgres = start_postgres()
            shared.stack.callback(shared.postgres.stop)
        return shared.postgres.create_database(name)

    def switchyard_worker(
        self, *, env: dict[str, str], broker_url: str, name: str, concurrency: int, pool: str
    ) -> WorkerProcess:
        """`switchyard worker`, as the integration tests start it."""
        worker = start_worker(
            env=env,
            broker_url=broker_url,
            hostname=f"{name}@localhost",
            log_path=self.workdir / f"{name}.log",
            concurrency=concurrency,
            pool=pool,
        )
        self._stack.callback(worker.stop)
        return worker

    def celery_worker(
        self,
        *,
        app: str,
        broker_url: str,
        name: str,
        concurrency: int,
        pool: str,
        result_backend: str | None = None,
    ) -> WorkerProcess:
        """`celery -A <app> worker`: the baselines' worker, same pool and concurrency flags."""
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "--broker",
            broker_url,
            *(["--result-backend", result_backend] if result_backend else []),
            "worker",
            f"--concurrency={concurrency}",
            f"--pool={pool}",
            f"--hostname={name}@localhost",
            "--loglevel=INFO",
            "--task-events",
        ]
        process = self._spawn(command, name=name, env={})
        worker = WorkerProcess(process, f"{name}@localhost", self.workdir / f"{name}.log")
        self._stack.callback(worker.stop)
        _wait_for_ping(worker, broker_url)
        return worker

    def http_server(self, command: list[str], *, name: str, env: dict[str, str]) -> str:
        """A server started by `command` with PORT set; its base URL once /health answers."""
        port = free_port()
        process = self._spawn(command, name=name, env={**env, "PORT": str(port)})
        self._stack.callback(_stop_group, process)
        self._shared.servers[name] = process
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServiceFailed(f"{name} exited with {process.returncode}; see {name}.log")
            try:
                if httpx.get(f"{base_url}/health", timeout=1.0).status_code == 200:
                    return base_url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise ServiceFailed(f"{name} did not answer /health in {READY_TIMEOUT}s; see {name}.log")

    def server_pid(self, name: str) -> int:
        """The process id of the server `http_server` started as `name` (for its memory)."""
        return self._shared.servers[name].pid

    def _spawn(
        self, command: list[str], *, name: str, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
        with (self.workdir / f"{name}.log").open("wb") as log:
            return subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                command,
                cwd=REPO_ROOT,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us; we stop the group ourselves
            )


def _wait_for_ping(worker: WorkerProcess, broker_url: str) -> None:
    probe = Celery(broker=broker_url, set_as_current=False)
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if worker.process.poll() is not None:
                raise ServiceFailed(
                    f"worker exited with {worker.process.returncode}:\n{worker.log()}"
                )
            if probe.control.ping(destination=[worker.hostname], timeout=0.5):
                return
        raise ServiceFailed(f"worker {worker.hostname} not ready in {READY_TIMEOUT}s")
    finally:
        probe.close()


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
