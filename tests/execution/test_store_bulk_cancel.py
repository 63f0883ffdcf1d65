"""The store's bulk cancel (a purge) and its tally: QUEUED rows only, in bounded batches."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import event

from execution.status import TaskStatus
from execution.store import TaskStore
from tests.helpers import claim, queued_task


def _status(store: TaskStore, task_id: str) -> TaskStatus:
    row = store.get(task_id)
    assert row is not None
    return row.status


def test_every_queued_task_is_cancelled_in_batches_each_with_its_event(
    store: TaskStore,
) -> None:
    tasks = [queued_task(store, tool_id="echo") for _ in range(5)]
    commits: list[int] = []

    def committed(_: Any) -> None:
        commits.append(1)

    event.listen(store.engine, "commit", committed)
    try:
        cancelled = store.cancel_queued(reason="purged by ops: test", batch=2)
    finally:
        event.remove(store.engine, "commit", committed)

    assert cancelled == Counter({("thread", "echo"): 5})
    # Three batches that changed rows (2 + 2 + 1), then one that found nothing left.
    assert len(commits) == 4
    for task in tasks:
        row = store.get(task.task_id)
        assert row is not None
        assert (row.status, row.message, row.attempts) == (
            TaskStatus.CANCELLED,
            "purged by ops: test",
            0,
        )
        last = store.events(task.task_id)[-1]
        assert (last.status, last.message) == (TaskStatus.CANCELLED, "purged by ops: test")


def test_running_and_finished_tasks_are_not_touched(store: TaskStore) -> None:
    running = queued_task(store)
    assert claim(store, running.task_id) is not None
    finished = queued_task(store)
    assert store.cancel(finished.task_id, reason="cancelled by alice") is not None
    waiting = queued_task(store)

    cancelled = store.cancel_queued(reason="purge")

    assert cancelled == Counter({("thread", "noop"): 1})
    statuses = {t.task_id: _status(store, t.task_id) for t in (running, finished, waiting)}
    assert statuses == {
        running.task_id: TaskStatus.PROCESSING,
        finished.task_id: TaskStatus.CANCELLED,
        waiting.task_id: TaskStatus.CANCELLED,
    }
    assert store.events(finished.task_id)[-1].message == "cancelled by alice"


def test_filters_by_tool_and_backend_combine(store: TaskStore) -> None:
    echo_celery = queued_task(store, tool_id="echo", backend="celery")
    echo_thread = queued_task(store, tool_id="echo", backend="thread")
    noop_celery = queued_task(store, tool_id="noop", backend="celery")

    cancelled = store.cancel_queued(reason="purge", tool_ids={"echo"}, backend="celery")

    assert cancelled == Counter({("celery", "echo"): 1})
    assert _status(store, echo_celery.task_id) is TaskStatus.CANCELLED
    for kept in (echo_thread, noop_celery):
        assert _status(store, kept.task_id) is TaskStatus.QUEUED
    assert store.cancel_queued(reason="purge", tool_ids=set()) == Counter()
    assert _status(store, echo_thread.task_id) is TaskStatus.QUEUED


def test_a_task_waiting_for_its_retry_is_cancelled_without_its_backoff_or_last_error(
    store: TaskStore,
) -> None:
    task = queued_task(store, tool_id="flaky")
    assert claim(store, task.task_id) is not None
    retrying = store.retry_later(
        task.task_id,
        attempt=1,
        delay=600,
        error_code="ConnectionError",
        error_message="refused",
        message="retry 1 of 3 in 600s",
    )
    assert retrying is not None
    assert retrying.run_after is not None

    store.cancel_queued(reason="purge", tool_ids={"flaky"})

    row = store.get(task.task_id)
    assert row is not None
    assert (row.status, row.run_after, row.error_code, row.error_message) == (
        TaskStatus.CANCELLED,
        None,
        None,
        None,
    )
    assert claim(store, task.task_id) is None  # a message arriving later runs nothing


def test_tally_counts_per_status_backend_and_tool(store: TaskStore) -> None:
    queued_task(store, tool_id="echo", backend="celery")
    queued_task(store, tool_id="echo", backend="celery")
    running = queued_task(store, tool_id="noop")
    assert claim(store, running.task_id) is not None

    assert store.tally() == {
        (TaskStatus.QUEUED, "celery", "echo"): 2,
        (TaskStatus.PROCESSING, "thread", "noop"): 1,
    }
    assert store.tally(TaskStatus.PROCESSING) == {(TaskStatus.PROCESSING, "thread", "noop"): 1}
