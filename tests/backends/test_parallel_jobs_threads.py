"""Parallel jobs on the thread pool: batches on the pool's threads, a finalizer that runs once,
retries, fail-fast and partial results, cancel, and a lost batch recovered."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

from execution.batch_records import BATCHES
from execution.executor import ExecutorLimits, TaskExecutor
from execution.models import utcnow
from execution.records import TASKS, TaskRecord
from execution.status import TaskStatus
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry
from tests.conftest import ThreadBackendFactory
from tests.helpers import queued_task, wait_until
from tests.tools import SQUARES_PEAK


def _run_job(
    store: TaskStore,
    thread_backends: ThreadBackendFactory,
    payload: dict[str, Any],
    *,
    tool_id: str = "squares",
    workers: int = 2,
) -> TaskRecord:
    pool = thread_backends(workers=workers)
    job = queued_task(store, tool_id=tool_id, payload=payload)
    pool.submit(job)
    return _ended(store, job.task_id)


def _ended(store: TaskStore, task_id: str) -> TaskRecord:
    def ended() -> bool:
        record = store.get(task_id)
        return record is not None and record.status.is_terminal

    wait_until(ended, what="the job to end")
    record = store.get(task_id)
    assert record is not None
    return record


def _messages(store: TaskStore, task_id: str) -> list[str | None]:
    return [event.message for event in store.events(task_id)]


def test_a_job_runs_its_batches_on_the_pool_and_finalizes_once(
    store: TaskStore, thread_backends: ThreadBackendFactory
) -> None:
    SQUARES_PEAK.peak = 0

    job = _run_job(store, thread_backends, {"n": 8, "seconds": 0.05}, workers=2)

    assert job.status is TaskStatus.COMPLETED
    assert job.result == {"sum": sum(x * x for x in range(8)), "failed": []}
    assert (job.progress, job.attempts) == (100, 1)
    batches = store.batches.of(job.task_id)
    assert [(b.batch_no, b.status, b.attempts, b.progress) for b in batches] == [
        (n, TaskStatus.COMPLETED, 1, 100) for n in range(8)
    ]
    assert [b.result for b in batches] == [{"square": n * n} for n in range(8)]
    messages = _messages(store, job.task_id)
    assert messages.count("finalizing") == 1
    assert "planned 8 batches" in messages
    steps = [
        (e.progress, e.message) for e in store.events(job.task_id) if "ended" in (e.message or "")
    ]
    # the job's progress counts the batches that ended; 99 % at most until it is finalized
    assert steps == [
        (100 * n // 8 if n < 8 else 99, f"{n} of 8 batches ended") for n in range(1, 9)
    ]
    assert SQUARES_PEAK.peak == 2  # both threads, never more
    assert store.batches.counts([job.task_id]) == {job.task_id: {TaskStatus.COMPLETED: 8}}


def test_a_batch_that_fails_then_succeeds_is_retried_by_the_tool_policy(
    store: TaskStore, thread_backends: ThreadBackendFactory
) -> None:
    job = _run_job(store, thread_backends, {"n": 4, "flaky": {"2": 2}})

    assert job.status is TaskStatus.COMPLETED
    assert job.result == {"sum": 14, "failed": []}
    attempts = [(b.attempts, b.error_code) for b in store.batches.of(job.task_id)]
    assert attempts == [(1, None), (1, None), (3, None), (1, None)]


def test_a_batch_failing_for_good_fails_the_job_fast(
    store: TaskStore, thread_backends: ThreadBackendFactory
) -> None:
    job = _run_job(store, thread_backends, {"n": 6, "broken": [0], "seconds": 0.2}, workers=1)

    assert job.status is TaskStatus.FAILED
    assert job.error_code == "BATCH_FAILED"
    assert job.error_message == "batch 0 of 6 ended FAILED: ValueError: batch 0 is broken"
    batches = store.batches.of(job.task_id)
    assert batches[0].status is TaskStatus.FAILED
    assert {b.status for b in batches[1:]} == {TaskStatus.CANCELLED}  # never started
    assert all(b.attempts == 0 for b in batches[1:])


def test_a_partial_job_finalizes_with_what_completed(
    store: TaskStore, thread_backends: ThreadBackendFactory
) -> None:
    job = _run_job(store, thread_backends, {"n": 5, "broken": [1, 3]}, tool_id="squares-partial")

    assert job.status is TaskStatus.COMPLETED
    assert job.result == {"sum": 0 + 4 + 16, "failed": [1, 3]}
    statuses = Counter(b.status for b in store.batches.of(job.task_id))
    assert statuses == {TaskStatus.COMPLETED: 3, TaskStatus.FAILED: 2}


def test_a_job_with_no_batches_finalizes_in_its_own_attempt(
    store: TaskStore, thread_backends: ThreadBackendFactory
) -> None:
    job = _run_job(store, thread_backends, {"n": 0})

    assert (job.status, job.result) == (TaskStatus.COMPLETED, {"sum": 0, "failed": []})
    assert store.batches.of(job.task_id) == []


def test_cancelling_a_job_cancels_its_waiting_batches_and_stops_the_running_one(
    store: TaskStore, thread_backends: ThreadBackendFactory
) -> None:
    pool = thread_backends(workers=1)
    job = queued_task(store, tool_id="squares", payload={"n": 5, "seconds": 30})
    pool.submit(job)
    wait_until(
        lambda: any(b.status is TaskStatus.PROCESSING for b in store.batches.of(job.task_id)),
        what="the first batch to start",
    )

    assert store.request_cancel(job.task_id, reason="cancel requested by tester") is not None
    assert store.batches.cancel_job(job.task_id, reason="cancelled by tester") is not None

    ended = _ended(store, job.task_id)
    assert ended.status is TaskStatus.CANCELLED
    statuses = [b.status for b in store.batches.of(job.task_id)]
    assert statuses == [TaskStatus.CANCELLED] * 5
    assert _messages(store, job.task_id).count("finalizing") == 1


def test_cancelling_a_job_with_no_batch_running_ends_it_at_once(
    store: TaskStore, executor: TaskExecutor
) -> None:
    job = queued_task(store, tool_id="squares", payload={"n": 3})
    executor.run(job.task_id)  # plans; nothing runs the batches (no pool)

    assert store.request_cancel(job.task_id, reason="cancel requested by tester") is not None
    cancelled = store.batches.cancel_job(job.task_id, reason="cancelled by tester")

    assert cancelled is not None
    assert cancelled.status is TaskStatus.CANCELLED
    assert {b.status for b in store.batches.of(job.task_id)} == {TaskStatus.CANCELLED}


def test_a_lost_batch_runs_again_and_the_job_still_finalizes_once(
    store: TaskStore, executor: TaskExecutor
) -> None:
    job = queued_task(store, tool_id="squares", payload={"n": 2})
    executor.run(job.task_id)
    lost = store.batches.claim(job.task_id, 0, owner="dead:1", lease_seconds=-1)
    assert lost is not None  # claimed by a process that died at once: its lease expired

    executor.run_batch(job.task_id, 1)
    executor.run_batch(job.task_id, 0)  # a copy handed over again claims the lost attempt

    ended = store.get(job.task_id)
    assert ended is not None
    assert (ended.status, ended.result) == (TaskStatus.COMPLETED, {"sum": 1, "failed": []})
    assert [b.attempts for b in store.batches.of(job.task_id)] == [2, 1]
    assert _messages(store, job.task_id).count("finalizing") == 1


def test_a_job_nobody_finalized_is_expired_for_the_recovery_sweep(
    store: TaskStore, executor: TaskExecutor
) -> None:
    job = queued_task(store, tool_id="squares", payload={"n": 1})
    executor.run(job.task_id)
    batch = store.batches.claim(job.task_id, 0, owner="me:1", lease_seconds=30)
    assert batch is not None
    # The batch ends, and its process dies before it claims the finalizer.
    store.batches.end(job.task_id, 0, attempt=1, status=TaskStatus.COMPLETED, result={"square": 0})

    assert store.batches.expire_stalled(unchanged_for=60, limit=10) == 0  # too recent
    earlier = utcnow() - timedelta(seconds=120)
    with store.engine.begin() as conn:  # two minutes of nothing
        conn.execute(update(TASKS).values(updated_at=earlier))
        conn.execute(update(BATCHES).values(updated_at=earlier))
    assert store.batches.expire_stalled(unchanged_for=60, limit=10) == 1
    assert [t.task_id for t in store.lost(limit=10)] == [job.task_id]


class _Paused:
    """A gate holding the tools in `tools`."""

    def __init__(self, *tools: str) -> None:
        self.tools = frozenset(tools)

    def held_tools(self) -> frozenset[str]:
        return self.tools


def test_the_batches_of_a_paused_tool_wait_never_handed_over_until_it_resumes(
    store: TaskStore, registry: ToolRegistry, data_dir: Path
) -> None:
    gate = _Paused()
    executor = TaskExecutor(store=store, registry=registry, data_dir=data_dir, gate=gate)
    job = queued_task(store, tool_id="squares", payload={"n": 2})
    executor.run(job.task_id)
    batches = store.batches.of(job.task_id)
    assert {b.status for b in batches} == {TaskStatus.QUEUED}

    gate.tools = frozenset({"squares"})  # paused after the batches were handed over
    for batch in batches:
        executor.run_batch(job.task_id, batch.batch_no)

    held = store.batches.of(job.task_id)
    assert [(b.status, b.attempts, b.dispatched_at) for b in held] == [
        (TaskStatus.QUEUED, 0, None)
    ] * 2  # for the sweeps to hand over after the resume
    assert (
        store.batches.awaiting_hand_over(
            backend="thread", unchanged_for=60, limit=10, except_tools=gate.tools
        )
        == []
    )

    gate.tools = frozenset()
    waiting = store.batches.awaiting_hand_over(backend="thread", unchanged_for=60, limit=10)
    assert [b.batch_no for b, _ in waiting] == [0, 1]
    for batch, _ in waiting:
        executor.run_batch(job.task_id, batch.batch_no)
    ended = store.get(job.task_id)
    assert ended is not None
    assert (ended.status, ended.result) == (TaskStatus.COMPLETED, {"sum": 1, "failed": []})


def test_a_batch_past_its_soft_time_limit_is_told_to_stop_and_retried(
    store: TaskStore, registry: ToolRegistry, data_dir: Path
) -> None:
    limits = ExecutorLimits(soft_time_limit=0.2, heartbeat_seconds=0.05, lease_seconds=5)
    executor = TaskExecutor(store=store, registry=registry, data_dir=data_dir, limits=limits)
    job = queued_task(store, tool_id="squares", payload={"n": 1, "seconds": 5})
    executor.run(job.task_id)

    for _ in range(3):  # its first run, then the tool's two retries
        executor.run_batch(job.task_id, 0)

    [batch] = store.batches.of(job.task_id)
    assert (batch.status, batch.attempts) == (TaskStatus.FAILED, 3)
    assert (batch.error_code, batch.error_message) == (
        "SoftTimeLimitExceeded",
        "soft time limit 0.2s exceeded",
    )
    ended = store.get(job.task_id)
    assert ended is not None
    assert (ended.status, ended.error_code) == (TaskStatus.FAILED, "BATCH_FAILED")


def test_a_batch_result_json_cannot_hold_fails_the_batch_without_a_retry(
    store: TaskStore, thread_backends: ThreadBackendFactory
) -> None:
    job = _run_job(store, thread_backends, {"n": 2, "unstorable": [1]})

    assert (job.status, job.error_code) == (TaskStatus.FAILED, "BATCH_FAILED")
    batch = store.batches.of(job.task_id)[1]
    assert (batch.status, batch.attempts, batch.error_code) == (
        TaskStatus.FAILED,
        1,
        "ResultNotSerializable",
    )
