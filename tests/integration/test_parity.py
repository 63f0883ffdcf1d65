"""The parity suite: the same scenarios on the thread and the Celery backend write the same rows.

Real redis-server, a real `switchyard worker` subprocess, and both SQLite (one file shared by
this process and the worker, WAL) and a real PostgreSQL server. Rows and `task_events` must be
equal field by field except `backend`, `celery_task_id`, the timestamps (compared as set/unset)
and the routing inputs `task_id`, `rollout_bucket`, `rollout_percentage`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from api.runtime import Runtime
from api.settings import Settings
from dispatch.dispatcher import NewTask
from execution import database
from execution.records import TaskRecord
from execution.status import TaskStatus
from tests.helpers import wait_until
from tests.integration.conftest import fresh_database_url
from tests.integration.servers import RedisServer
from tests.integration.workers import WorkerProcess, start_worker

pytestmark = pytest.mark.integration

TIMESTAMPS = (
    "created_at",
    "queued_at",
    "processing_started_at",
    "completed_at",
    "failed_at",
    "updated_at",
    "lease_expires_at",
    "run_after",
    "dispatched_at",
    "cancel_requested_at",
)
BACKEND_SPECIFIC = ("task_id", "backend", "celery_task_id", "rollout_bucket", "rollout_percentage")
"""`lease_owner` is not here: a task that ended holds no lease on either backend."""
WAIT_SECONDS = 60.0
TOOLS = "execution.tools.builtin,tests.integration.limited_tools"


@dataclass
class Pair:
    """Two API-side runtimes on one database: one routes everything to threads, one to Celery."""

    thread: Runtime
    celery: Runtime
    worker: WorkerProcess

    def both(self) -> list[tuple[str, Runtime]]:
        """(backend name, runtime routing to it)."""
        return [("thread", self.thread), ("celery", self.celery)]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pair(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pair]:
    """Both runtimes plus a one-process worker, on a fresh database of each kind."""
    workdir = tmp_path_factory.mktemp(f"parity-{request.param}")
    data_dir = workdir / "data"
    data_dir.mkdir()
    (data_dir / "people.csv").write_text(
        "name,age,score,joined\n"
        + "".join(f"p{i},{20 + i % 50},{i * 0.5},2024-01-{1 + i % 28:02d}\n" for i in range(400))
        + "nobody,,NA,\n"
    )
    url = fresh_database_url(request.param, request, workdir)
    broker = redis_server.url.rsplit("/", 1)[0] + ("/1" if request.param == "sqlite" else "/2")
    common: dict[str, Any] = {
        "database_url": url,
        "redis_url": broker,
        "background_workers": 1,
        "switchyard_data_dir": data_dir,
        "rollout_salt": "parity",
        "switchyard_tools": TOOLS,
        "recovery_sweep_seconds": 0.5,
        "task_heartbeat_seconds": 0.5,
        "thread_sweep_seconds": 0.5,
    }
    thread = Runtime.build(Settings(_env_file=None, use_celery=False, **common))
    celery = Runtime.build(
        Settings(_env_file=None, use_celery=True, celery_rollout_percentage=100, **common)
    )
    database.upgrade(thread.engine)
    worker = start_worker(
        env={
            "DATABASE_URL": url,
            "REDIS_URL": broker,
            "SWITCHYARD_DATA_DIR": str(data_dir),
            "SWITCHYARD_TOOLS": TOOLS,
            "RECOVERY_SWEEP_SECONDS": "0.5",
            "TASK_HEARTBEAT_SECONDS": "0.5",
        },
        broker_url=broker,
        hostname=f"parity-{request.param}@localhost",
        log_path=workdir / "worker.log",
        concurrency=1,
    )
    celery.start()  # first: it seeds the shared rollout state at 100 %
    thread.start()  # USE_CELERY=false: the master switch keeps it on threads regardless
    assert celery.rollout.current().share_for("noop") == 100
    yield Pair(thread, celery, worker)
    thread.stop()
    celery.stop()
    worker.stop()


def wait_terminal(runtime: Runtime, task_id: str) -> TaskRecord:
    """Poll the row until the task ends."""

    def ended() -> TaskRecord | None:
        record = runtime.store.get(task_id)
        return record if record is not None and record.status.is_terminal else None

    return wait_until(ended, what=f"task {task_id} to end", timeout=WAIT_SECONDS)


def wait_status(runtime: Runtime, task_id: str, status: TaskStatus) -> None:
    """Poll the row until it reaches `status`."""

    def reached() -> bool:
        record = runtime.store.get(task_id)
        return record is not None and record.status == status

    wait_until(reached, what=f"task {task_id} to be {status}", timeout=WAIT_SECONDS)


def snapshot(runtime: Runtime, record: TaskRecord) -> dict[str, Any]:
    """The row and its events with only the backend-specific parts taken out."""
    row = dataclasses.asdict(record)
    for key in BACKEND_SPECIFIC:
        row.pop(key)
    for key in TIMESTAMPS:
        row[key] = row[key] is not None
    events = [
        (e.seq, e.status, e.progress, e.message) for e in runtime.store.events(record.task_id)
    ]
    return {"row": row, "events": events}


def run_on_both(pair: Pair, submit: Callable[[Runtime], str]) -> dict[str, dict[str, Any]]:
    """Run one scenario on each backend; check each row's backend fields; return snapshots."""
    snapshots = {}
    for name, runtime in pair.both():
        record = wait_terminal(runtime, submit(runtime))
        assert record.backend == name
        assert (record.celery_task_id is not None) == (name == "celery")
        snapshots[name] = snapshot(runtime, record)
    return snapshots


def submitter(tool_id: str, payload: dict[str, Any], priority: int = 0) -> Callable[[Runtime], str]:
    """Submit through the dispatcher, as the API does."""

    def submit(runtime: Runtime) -> str:
        record = runtime.dispatcher.submit(
            NewTask(tool_id=tool_id, payload=payload, user_id="parity", priority=priority)
        )
        return record.task_id

    return submit


def test_success_with_progress_writes_identical_rows(pair: Pair) -> None:
    runs = run_on_both(pair, submitter("sleep", {"seconds": 0.3, "steps": 5}))
    assert runs["thread"] == runs["celery"]
    assert runs["thread"]["row"]["status"] == TaskStatus.COMPLETED
    assert [e[2] for e in runs["thread"]["events"]] == [0, 0, 0, 20, 40, 60, 80, 100, 100]


def test_profiling_a_csv_file_writes_identical_rows(pair: Pair) -> None:
    runs = run_on_both(pair, submitter("profile-csv", {"path": "people.csv", "chunk_rows": 50}))
    assert runs["thread"] == runs["celery"]
    result = runs["thread"]["row"]["result"]
    assert result["rows"] == 401
    assert {c["name"]: c["type"] for c in result["profile"]} == {
        "name": "string",
        "age": "integer",
        "score": "float",
        "joined": "date",
    }
    assert len(runs["thread"]["events"]) > 8  # a progress event per chunk


def test_tool_exception_writes_identical_failed_rows(pair: Pair) -> None:
    runs = run_on_both(pair, submitter("fail", {"message": "boom", "after_percent": 40}))
    assert runs["thread"] == runs["celery"]
    row = runs["thread"]["row"]
    assert (row["status"], row["error_code"], row["error_message"]) == (
        TaskStatus.FAILED,
        "ToolFailure",
        "boom",
    )


def test_bad_input_for_the_tool_writes_identical_failed_rows(pair: Pair) -> None:
    runs = run_on_both(pair, submitter("profile-csv", {"path": "missing.csv"}))
    assert runs["thread"] == runs["celery"]
    assert runs["thread"]["row"]["error_code"] == "CsvInputError"


def test_payload_the_tool_rejects_writes_identical_failed_rows(pair: Pair) -> None:
    def submit_unvalidated(runtime: Runtime) -> str:
        # As if the row predates a stricter payload model: the executor must refuse it.
        name = "celery" if runtime is pair.celery else "thread"
        backend = runtime.backends[name]
        task_id = f"{name}-{time.monotonic_ns()}"[:36]
        queued = runtime.store.create_queued(
            task_id=task_id,
            user_id="parity",
            tool_id="sleep",
            payload={"seconds": "soon"},
            priority=0,
            backend=name,
            rollout_bucket=0,
            rollout_percentage=0.0,
            celery_task_id=backend.external_id(task_id),
        )
        backend.submit(queued)
        return task_id

    runs = run_on_both(pair, submit_unvalidated)
    assert runs["thread"] == runs["celery"]
    assert runs["thread"]["row"]["error_code"] == "InvalidPayload"


def test_a_task_running_for_seconds_writes_identical_rows(pair: Pair) -> None:
    runs = run_on_both(pair, submitter("sleep", {"seconds": 3, "steps": 3}))
    assert runs["thread"] == runs["celery"]
    assert runs["thread"]["row"]["result"] == {"slept_seconds": 3.0}


def test_a_tool_past_its_soft_time_limit_fails_the_same_way_on_both(pair: Pair) -> None:
    # Celery interrupts the tool at the limit; threads stop it at its next progress call.
    runs = run_on_both(pair, submitter("over-time", {}))
    assert runs["thread"] == runs["celery"]
    row = runs["thread"]["row"]
    assert (row["status"], row["error_code"], row["error_message"]) == (
        TaskStatus.FAILED,
        "SoftTimeLimitExceeded",
        "soft time limit 1s exceeded",
    )


def test_a_high_priority_task_overtakes_waiting_low_priority_ones(pair: Pair) -> None:
    orders = {}
    for name, runtime in pair.both():
        blocker = submitter("sleep", {"seconds": 1.0, "steps": 2})(runtime)
        wait_status(runtime, blocker, TaskStatus.PROCESSING)
        waiting = [submitter("noop", {}, priority=0)(runtime) for _ in range(3)]
        waiting.append(submitter("noop", {}, priority=9)(runtime))
        records = [wait_terminal(runtime, task_id) for task_id in waiting]
        started = sorted(records, key=lambda r: r.processing_started_at or r.created_at)
        orders[name] = [r.priority for r in started]
    assert orders["thread"] == orders["celery"] == [9, 0, 0, 0]


def test_a_failure_retried_by_policy_writes_identical_rows(pair: Pair) -> None:
    runs = run_on_both(pair, submitter("flaky-once", {}))
    assert runs["thread"] == runs["celery"]
    row = runs["thread"]["row"]
    assert (row["status"], row["attempts"], row["result"], row["error_code"]) == (
        TaskStatus.COMPLETED,
        2,
        {"attempt": 2},
        None,
    )
    assert [(e[1], e[3]) for e in runs["thread"]["events"]] == [
        (TaskStatus.CREATED, "created"),
        (TaskStatus.QUEUED, "queued"),
        (TaskStatus.PROCESSING, "started"),
        (TaskStatus.PROCESSING, "trying"),
        (TaskStatus.QUEUED, "retry 1 of 2 in 0.0s after ConnectionError: upstream refused"),
        (TaskStatus.PROCESSING, "started"),
        (TaskStatus.COMPLETED, "completed"),
    ]


def test_a_tool_past_its_hard_limit_writes_identical_failed_rows(pair: Pair) -> None:
    runs = run_on_both(pair, submitter("overrun", {}))
    assert runs["thread"] == runs["celery"]
    row = runs["thread"]["row"]
    assert (row["status"], row["error_code"], row["error_message"]) == (
        TaskStatus.FAILED,
        "TIME_LIMIT_EXCEEDED",
        "hard time limit 2s exceeded",
    )


def test_cancelling_a_running_task_writes_identical_cancelled_rows(pair: Pair) -> None:
    def start_then_cancel(runtime: Runtime) -> str:
        task_id = submitter("sits", {})(runtime)
        wait_status(runtime, task_id, TaskStatus.PROCESSING)
        assert runtime.dispatcher.cancel(task_id, actor="parity") is not None
        return task_id

    runs = run_on_both(pair, start_then_cancel)
    assert runs["thread"] == runs["celery"]
    assert runs["thread"]["row"]["status"] == TaskStatus.CANCELLED
    assert [(e[1], e[3]) for e in runs["thread"]["events"]][-3:] == [
        (TaskStatus.PROCESSING, "started"),
        (TaskStatus.PROCESSING, "cancel requested by parity"),
        (TaskStatus.CANCELLED, "cancelled while running"),
    ]
