"""Retries by the tool's policy: back to QUEUED with a backoff, the same way on every backend."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from execution.executor import RunOutcome, TaskExecutor
from execution.models import utcnow
from execution.status import TaskStatus
from execution.store import TaskStore
from execution.tools.registry import RetryPolicy, Tool, ToolContext, ToolRegistry
from tests.helpers import queued_task


def test_a_failure_with_retries_left_waits_queued_and_then_runs_again(
    executor: TaskExecutor, store: TaskStore
) -> None:
    task_id = queued_task(store, tool_id="flaky", payload={"failures": 2}).task_id

    assert executor.run(task_id) is RunOutcome.RETRYING
    waiting = store.get(task_id)
    assert waiting is not None
    assert (waiting.status, waiting.attempts, waiting.error_code) == (
        TaskStatus.QUEUED,
        1,
        "ConnectionError",
    )
    assert (waiting.dispatched_at, waiting.lease_owner) == (None, None)
    assert waiting.run_after is not None

    assert executor.run(task_id) is RunOutcome.RETRYING
    assert executor.run(task_id) is RunOutcome.COMPLETED

    done = store.get(task_id)
    assert done is not None
    assert (done.status, done.attempts, done.result) == (TaskStatus.COMPLETED, 3, {"attempt": 3})
    assert (done.error_code, done.error_message, done.run_after) == (None, None, None)
    messages = [e.message for e in store.events(task_id) if e.status is TaskStatus.QUEUED]
    assert messages == [
        "queued",
        "retry 1 of 3 in 0.0s after ConnectionError: attempt 1: upstream refused",
        "retry 2 of 3 in 0.0s after ConnectionError: attempt 2: upstream refused",
    ]


def test_when_retries_run_out_the_last_failure_is_stored(
    executor: TaskExecutor, store: TaskStore
) -> None:
    task_id = queued_task(store, tool_id="flaky", payload={"failures": 9}).task_id

    outcomes = [executor.run(task_id) for _ in range(5)]

    assert outcomes == [*[RunOutcome.RETRYING] * 3, RunOutcome.FAILED, RunOutcome.NOT_CLAIMED]
    record = store.get(task_id)
    assert record is not None
    assert (record.status, record.attempts, record.error_message) == (
        TaskStatus.FAILED,
        4,
        "attempt 4: upstream refused",
    )


def test_an_exception_the_policy_does_not_name_fails_at_once(
    executor: TaskExecutor, store: TaskStore
) -> None:
    task_id = queued_task(store, tool_id="picky").task_id

    assert executor.run(task_id) is RunOutcome.FAILED

    record = store.get(task_id)
    assert record is not None
    assert (record.status, record.attempts, record.error_code) == (
        TaskStatus.FAILED,
        1,
        "ValueError",
    )


def test_a_retry_is_not_claimed_before_its_backoff_ends(store: TaskStore, data_dir: Path) -> None:
    def refuse(ctx: ToolContext) -> Any:
        raise TimeoutError("later")

    registry = ToolRegistry(
        [
            Tool(
                tool_id="patient",
                handler=refuse,
                retry=RetryPolicy(max_retries=1, backoff=60, jitter=False),
            )
        ]
    )
    executor = TaskExecutor(store=store, registry=registry, data_dir=data_dir)
    task_id = queued_task(store, tool_id="patient").task_id

    assert executor.run(task_id) is RunOutcome.RETRYING
    assert executor.run(task_id) is RunOutcome.NOT_CLAIMED  # a copy delivered too early

    record = store.get(task_id)
    assert record is not None
    assert record.run_after is not None
    assert timedelta(seconds=59) < record.run_after - utcnow() <= timedelta(seconds=60)
    assert store.queued(backend="thread") == []  # not due: the pool's sweep leaves it


def test_a_manual_retry_gives_the_policy_a_fresh_round(
    executor: TaskExecutor, store: TaskStore
) -> None:
    task_id = queued_task(store, tool_id="flaky", payload={"failures": 5}).task_id
    while executor.run(task_id) is RunOutcome.RETRYING:
        pass
    assert store.retry_finished(task_id, backend="thread", celery_task_id=None, reason="again")
    assert store.retry_finished(task_id, backend="thread", celery_task_id=None, reason="x") is None

    outcomes = [executor.run(task_id), executor.run(task_id)]

    assert outcomes == [RunOutcome.RETRYING, RunOutcome.COMPLETED]
    record = store.get(task_id)
    assert record is not None
    assert (record.attempts, record.attempts_before_retry, record.result) == (6, 4, {"attempt": 6})


@pytest.mark.parametrize(
    ("retry", "expected"), [(1, 2.0), (2, 4.0), (3, 8.0), (9, 512.0), (10, 600.0), (10_000, 600.0)]
)
def test_backoff_doubles_up_to_its_cap(retry: int, expected: float) -> None:
    assert RetryPolicy(backoff=2, backoff_max=600, jitter=False).delay(retry) == expected


def test_jitter_stays_between_half_and_all_of_the_backoff() -> None:
    policy = RetryPolicy(backoff=2, backoff_max=600, jitter=True)

    delays = [policy.delay(3) for _ in range(200)]

    assert all(4.0 <= delay <= 8.0 for delay in delays)
    assert len(set(delays)) > 1


def test_a_negative_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
