"""Acceptance: at 50 %, a thousand tasks posted through the API split across both backends."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.runtime import Runtime
from api.settings import Settings
from execution.status import TaskStatus
from execution.store import TaskFilter
from tests.helpers import operator_client, wait_until
from tests.integration.servers import RedisServer
from tests.integration.workers import WorkerProcess, start_worker

pytestmark = pytest.mark.integration

TASKS = 1000


@pytest.fixture
def worker(redis_server: RedisServer, tmp_path: Path) -> Iterator[tuple[str, WorkerProcess]]:
    """A two-process worker on a SQLite file shared with the API."""
    url = f"sqlite:///{tmp_path / 'switchyard.db'}"
    broker = redis_server.url.rsplit("/", 1)[0] + "/3"
    process = start_worker(
        env={"DATABASE_URL": url, "REDIS_URL": broker},
        broker_url=broker,
        hostname="mixed@localhost",
        log_path=tmp_path / "worker.log",
        concurrency=2,
    )
    yield url, process
    process.stop()


def test_half_of_a_thousand_tasks_run_on_each_backend_and_all_complete(
    worker: tuple[str, WorkerProcess], redis_server: RedisServer
) -> None:
    url, _ = worker
    settings = Settings(
        _env_file=None,
        database_url=url,
        redis_url=redis_server.url.rsplit("/", 1)[0] + "/3",
        use_celery=True,
        celery_rollout_percentage=50,
        background_workers=4,
    )
    runtime = Runtime.build(settings)
    runtime.prepare_database()
    started = time.perf_counter()
    with operator_client(runtime) as client:
        for _ in range(TASKS):
            response = client.post("/tasks", json={"tool_id": "noop"})
            assert response.status_code == 201, response.text
        posted = time.perf_counter() - started

        def all_completed() -> bool:
            done = runtime.store.find(
                TaskFilter(status=TaskStatus.COMPLETED), limit=TASKS, offset=0
            )
            return len(done) == TASKS

        wait_until(all_completed, what=f"{TASKS} tasks to complete", timeout=180)
        finished = time.perf_counter() - started
    rows = runtime.store.find(TaskFilter(), limit=TASKS + 1, offset=0)
    split = Counter(row.backend for row in rows)
    print(f"\nsplit={dict(split)} posted_in={posted:.1f}s completed_in={finished:.1f}s")
    assert len(rows) == TASKS
    assert abs(split["celery"] - TASKS / 2) <= TASKS * 0.05
    assert split["celery"] + split["thread"] == TASKS
    assert all(row.attempts == 1 for row in rows)
