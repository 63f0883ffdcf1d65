"""Parallel jobs on both backends, live: a real redis-server and a `switchyard worker` of two
prefork children, on one SQLite file shared with this process, then on a real PostgreSQL.

The same job gives equal job rows, equal batch rows and equal results on threads and Celery;
a batch that fails then succeeds; a batch whose worker is killed (-9) runs again; cancel
mid-job; and in every case the finalizer ran exactly once ("finalizing" appears once in the
job's history: each finalizer run is that claim's event).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api.runtime import Runtime
from api.settings import Settings
from dispatch.dispatcher import NewTask
from execution import database
from execution.batch_records import BatchRecord
from execution.records import TaskRecord
from execution.status import TaskStatus
from tests.helpers import wait_until
from tests.integration.conftest import fresh_database_url
from tests.integration.faults import kill_group
from tests.integration.servers import RedisServer
from tests.integration.workers import WorkerProcess, start_worker

pytestmark = pytest.mark.integration

TOOLS = "execution.tools.builtin,tests.tools"
WAIT_SECONDS = 90.0
JOB_TIMES = ("created_at", "queued_at", "processing_started_at", "completed_at", "failed_at")
JOB_SPECIFIC = ("task_id", "backend", "celery_task_id", "rollout_bucket", "rollout_percentage")
BATCH_TIMES = ("created_at", "started_at", "finished_at", "updated_at", "dispatched_at")


@dataclass
class Rig:
    """A thread-only runtime and a Celery runtime on one database, and the worker."""

    thread: Runtime
    celery: Runtime
    worker: WorkerProcess
    worker_env: dict[str, str]
    broker: str
    workdir: Path

    def restart_worker(self, name: str) -> None:
        self.worker = start_worker(
            env=self.worker_env,
            broker_url=self.broker,
            hostname=f"{name}@localhost",
            log_path=self.workdir / f"{name}.log",
            concurrency=2,
        )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def rig(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Rig]:
    workdir = tmp_path_factory.mktemp(f"parallel-{request.param}")
    data_dir = workdir / "data"
    data_dir.mkdir()
    url = fresh_database_url(request.param, request, workdir)
    broker = redis_server.url.rsplit("/", 1)[0] + ("/9" if request.param == "sqlite" else "/10")
    common: dict[str, Any] = {
        "database_url": url,
        "redis_url": broker,
        "background_workers": 2,
        "switchyard_data_dir": data_dir,
        "rollout_salt": "parallel",
        "switchyard_tools": TOOLS,
        "recovery_sweep_seconds": 0.5,
        "task_heartbeat_seconds": 0.5,
        "task_lease_seconds": 3,
        "thread_sweep_seconds": 0.5,
        # A message a killed worker had taken but not run is published again after this.
        "celery_republish_seconds": 5,
    }
    thread = Runtime.build(Settings(_env_file=None, use_celery=False, **common))
    celery = Runtime.build(
        Settings(_env_file=None, use_celery=True, celery_rollout_percentage=100, **common)
    )
    database.upgrade(thread.engine)
    worker_env = {
        "DATABASE_URL": url,
        "REDIS_URL": broker,
        "SWITCHYARD_DATA_DIR": str(data_dir),
        "SWITCHYARD_TOOLS": TOOLS,
        "RECOVERY_SWEEP_SECONDS": "0.5",
        "TASK_HEARTBEAT_SECONDS": "0.5",
        "TASK_LEASE_SECONDS": "3",
        "CELERY_REPUBLISH_SECONDS": "5",
    }
    worker = start_worker(
        env=worker_env,
        broker_url=broker,
        hostname=f"parallel-{request.param}@localhost",
        log_path=workdir / "worker.log",
        concurrency=2,
    )
    celery.start()
    thread.start()
    rig = Rig(thread, celery, worker, worker_env, broker, workdir)
    yield rig
    thread.stop()
    celery.stop()
    rig.worker.stop()


def submit(runtime: Runtime, tool_id: str, payload: dict[str, Any]) -> str:
    task = NewTask(tool_id=tool_id, payload=payload, user_id="parallel", priority=0)
    return runtime.dispatcher.submit(task).task_id


def ended(runtime: Runtime, task_id: str) -> TaskRecord:
    def done() -> TaskRecord | None:
        record = runtime.store.get(task_id)
        return record if record is not None and record.status.is_terminal else None

    return wait_until(done, what=f"job {task_id} to end", timeout=WAIT_SECONDS)


def job_snapshot(runtime: Runtime, record: TaskRecord) -> dict[str, Any]:
    row = dataclasses.asdict(record)
    for key in JOB_SPECIFIC:
        row.pop(key)
    for key in (*JOB_TIMES, "updated_at", "lease_expires_at", "run_after", "dispatched_at"):
        row[key] = row[key] is not None
    events = [(e.status, e.progress, e.message) for e in runtime.store.events(record.task_id)]
    return {"row": row, "events": events}


def batch_snapshot(batch: BatchRecord) -> dict[str, Any]:
    row = dataclasses.asdict(batch)
    row.pop("task_id")
    row.pop("lease_owner")  # which process ran it
    for key in (*BATCH_TIMES, "lease_expires_at", "run_after", "cancel_requested_at"):
        row[key] = row[key] is not None
    return row


def run_on_both(rig: Rig, tool_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    runs = {}
    for name, runtime in (("thread", rig.thread), ("celery", rig.celery)):
        record = ended(runtime, submit(runtime, tool_id, payload))
        assert record.backend == name
        batches = runtime.store.batches.of(record.task_id)
        runs[name] = {
            "job": job_snapshot(runtime, record),
            "batches": [batch_snapshot(b) for b in batches],
            "owners": {owner_pid_of(b) for b in batches},
        }
    return runs


def owner_pid_of(batch: BatchRecord) -> int | None:
    owner = batch.lease_owner or ""
    return int(owner.rsplit(":", 1)[1]) if ":" in owner else None


def finalized(runtime: Runtime, task_id: str) -> int:
    return [e.message for e in runtime.store.events(task_id)].count("finalizing")


def corpus(size: int) -> list[str]:
    """Sentences with planted exact (case, punctuation) and near (one word) duplicates."""
    chance = random.Random(14)
    words = [f"w{n}" for n in range(400)]
    texts = [" ".join(chance.choice(words) for _ in range(12)) for _ in range(size)]
    for n in range(0, size - 20, 97):
        texts[n + 7] = texts[n].upper() + "!"
        near = texts[n].split()
        near[5] = "changed"
        texts[n + 13] = " ".join(near)
    return texts


def test_find_duplicates_gives_the_same_rows_and_groups_on_both_backends(rig: Rig) -> None:
    texts = corpus(3000)

    runs = run_on_both(
        rig, "find-duplicates", {"texts": texts, "threshold": 0.7, "pairs_per_batch": 300_000}
    )

    assert runs["thread"]["job"] == runs["celery"]["job"]
    assert runs["thread"]["batches"] == runs["celery"]["batches"]
    job = runs["thread"]["job"]
    assert job["row"]["status"] == TaskStatus.COMPLETED
    assert [e[2] for e in job["events"]].count("finalizing") == 1
    groups = job["row"]["result"]["groups"]
    planted = {(n, n + 7) for n in range(0, len(texts) - 20, 97)}
    found = {tuple(g["indices"][:2]) for g in groups if g["kind"] == "exact"}
    assert planted <= found
    assert len(runs["thread"]["batches"]) >= 10
    # Two prefork children ran the Celery batches: both cores were used.
    assert len(runs["celery"]["owners"]) == 2


def test_a_batch_that_fails_then_succeeds_writes_the_same_rows(rig: Rig) -> None:
    runs = run_on_both(rig, "squares", {"n": 4, "flaky": {"1": 1}})

    assert runs["thread"]["job"] == runs["celery"]["job"]
    assert runs["thread"]["batches"] == runs["celery"]["batches"]
    assert [b["attempts"] for b in runs["celery"]["batches"]] == [1, 2, 1, 1]
    assert runs["celery"]["job"]["row"]["result"] == {"sum": 14, "failed": []}


def test_a_batch_failing_for_good_fails_both_jobs_alike(rig: Rig) -> None:
    runs = run_on_both(rig, "squares", {"n": 3, "broken": [2]})

    assert runs["thread"]["job"] == runs["celery"]["job"]
    row = runs["celery"]["job"]["row"]
    assert (row["status"], row["error_code"]) == (TaskStatus.FAILED, "BATCH_FAILED")


@pytest.mark.parametrize("backend", ["thread", "celery"])
def test_cancelling_a_job_mid_way_stops_it_on_each_backend(rig: Rig, backend: str) -> None:
    runtime = rig.thread if backend == "thread" else rig.celery
    task_id = submit(runtime, "squares", {"n": 8, "seconds": 20})
    wait_until(
        lambda: any(b.status is TaskStatus.PROCESSING for b in runtime.store.batches.of(task_id)),
        what="a batch to start",
        timeout=WAIT_SECONDS,
    )

    asked = runtime.dispatcher.cancel(task_id, actor="tester")

    assert asked is not None
    record = ended(runtime, task_id)
    assert record.status is TaskStatus.CANCELLED
    statuses = {b.status for b in runtime.store.batches.of(task_id)}
    assert statuses == {TaskStatus.CANCELLED}
    assert finalized(runtime, task_id) == 1


def test_a_batch_whose_worker_is_killed_runs_again_and_the_job_finalizes_once(
    rig: Rig,
) -> None:
    task_id = submit(rig.celery, "squares", {"n": 4, "seconds": 3})
    running = wait_until(
        lambda: next(
            (b for b in rig.celery.store.batches.of(task_id) if b.status is TaskStatus.PROCESSING),
            None,
        ),
        what="a batch to start",
        timeout=WAIT_SECONDS,
    )
    assert owner_pid_of(running) is not None

    kill_group(rig.worker.process)  # the main process and both children, -9
    rig.restart_worker(f"after-kill-{rig.worker.hostname.split('@')[0]}")

    record = ended(rig.celery, task_id)
    assert record.status is TaskStatus.COMPLETED, rig.celery.store.batches.of(task_id)
    assert record.result == {"sum": 0 + 1 + 4 + 9, "failed": []}
    batches = rig.celery.store.batches.of(task_id)
    assert batches[running.batch_no].attempts == 2  # lost once, then run again
    assert all(b.status is TaskStatus.COMPLETED for b in batches)
    assert finalized(rig.celery, task_id) == 1
    assert record.attempts == 1
