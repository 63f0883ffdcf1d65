"""A worker's timer heap holds the limits of running tasks only, not every task it ever ran.

Every task a prefork worker runs arms a soft-time-limit timer in its main process; cancelled
timers stayed in the heap until they would have fired (25 minutes by default), so a worker's
memory grew with every task. The sweep drops them; the limits themselves stay enforced (the
fault and parity suites run their time-limit tests on workers with the sweep in place).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.runtime import Runtime
from api.settings import Settings
from backends.celery_timers import SWEEP_SECONDS
from dispatch.dispatcher import NewTask
from execution import database
from execution.status import TaskStatus
from tests.integration.servers import RedisServer
from tests.integration.workers import WorkerProcess, start_worker

pytestmark = pytest.mark.integration

TASKS = 300
DEADLINE_SECONDS = 120.0
SWEPT = re.compile(r"worker\.timers_swept\s.*dropped=(\d+)")


@pytest.fixture
def celery_runtime(
    redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[Runtime, WorkerProcess]]:
    url = f"sqlite:///{tmp_path / 'timers.db'}"
    broker = redis_server.url.rsplit("/", 1)[0] + "/11"
    runtime = Runtime.build(
        Settings(
            _env_file=None,
            database_url=url,
            redis_url=broker,
            use_celery=True,
            celery_rollout_percentage=100,
            switchyard_data_dir=tmp_path,
        )
    )
    database.upgrade(runtime.engine)
    worker = start_worker(
        env={"DATABASE_URL": url, "REDIS_URL": broker, "LOG_LEVEL": "DEBUG", "LOG_JSON": "false"},
        broker_url=broker,
        hostname="timers@localhost",
        log_path=tmp_path / "worker.log",
        concurrency=2,
    )
    runtime.start()
    yield runtime, worker
    runtime.stop()
    worker.stop()


def test_a_worker_drops_the_time_limit_timers_of_the_tasks_it_finished(
    celery_runtime: tuple[Runtime, WorkerProcess],
) -> None:
    runtime, worker = celery_runtime
    ids = [
        runtime.dispatcher.submit(NewTask(tool_id="noop", payload={}, user_id="u")).task_id
        for _ in range(TASKS)
    ]
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        records = [runtime.store.get(task_id) for task_id in ids]
        if all(r is not None and r.status == TaskStatus.COMPLETED for r in records):
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"not every task completed in {DEADLINE_SECONDS}s:\n{worker.log()[-3000:]}")
    # Each finished task left one cancelled timer; the next sweeps drop them all.
    deadline = time.monotonic() + 4 * SWEEP_SECONDS
    while (dropped := _dropped(worker)) < TASKS and time.monotonic() < deadline:
        time.sleep(0.5)
    assert dropped >= TASKS, (
        f"the sweep dropped {dropped} of {TASKS} timers:\n{worker.log()[-3000:]}"
    )


def _dropped(worker: WorkerProcess) -> int:
    return sum(int(found) for found in SWEPT.findall(worker.log()))
