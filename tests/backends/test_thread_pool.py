"""The thread backend: a bounded pool, highest priority first, refuses when full, loses nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from backends.base import BackendFull
from execution.records import TaskRecord
from execution.status import TaskStatus
from execution.store import TaskStore
from tests.conftest import ThreadBackendFactory
from tests.helpers import WAIT_SECONDS, queued_task, wait_until
from tests.tools import Gate


def _status(store: TaskStore, task: TaskRecord) -> TaskStatus:
    record = store.get(task.task_id)
    assert record is not None
    return record.status


def _wait_for(store: TaskStore, tasks: list[TaskRecord], status: TaskStatus) -> None:
    wait_until(
        lambda: all(_status(store, t) is status for t in tasks),
        what=f"{len(tasks)} task(s) to be {status}",
    )


def _hold_the_only_worker(
    store: TaskStore, gate: Gate, submit: Callable[[TaskRecord], None]
) -> TaskRecord:
    """Submit a `gate` task and wait until the single worker is running it."""
    blocker = queued_task(store, tool_id="gate")
    submit(blocker)
    wait_until(lambda: blocker.task_id in gate.ran, what="the worker to start the blocker")
    return blocker


def test_submitted_tasks_run_to_the_end(
    thread_backends: ThreadBackendFactory, store: TaskStore
) -> None:
    backend = thread_backends(workers=2)
    tasks = [queued_task(store, tool_id="echo", payload={"n": n}) for n in range(5)]

    for task in tasks:
        backend.submit(task)

    _wait_for(store, tasks, TaskStatus.COMPLETED)


def test_a_failing_tool_does_not_cost_the_pool_a_worker(
    thread_backends: ThreadBackendFactory, store: TaskStore
) -> None:
    backend = thread_backends(workers=1)
    failing, after = queued_task(store, tool_id="divide"), queued_task(store, tool_id="noop")

    backend.submit(failing)
    backend.submit(after)

    _wait_for(store, [after], TaskStatus.COMPLETED)
    assert _status(store, failing) is TaskStatus.FAILED
    assert backend.health().counts["alive"] == 1


def test_a_tool_calling_sys_exit_does_not_cost_the_pool_a_worker(
    thread_backends: ThreadBackendFactory, store: TaskStore
) -> None:
    backend = thread_backends(workers=1)
    exiting, after = queued_task(store, tool_id="exits"), queued_task(store, tool_id="noop")

    backend.submit(exiting)
    backend.submit(after)

    _wait_for(store, [after], TaskStatus.COMPLETED)
    assert backend.health().counts["alive"] == 1


def test_the_highest_priority_runs_first_then_first_come_first_served(
    thread_backends: ThreadBackendFactory, store: TaskStore, gate: Gate
) -> None:
    backend = thread_backends(workers=1)
    blocker = _hold_the_only_worker(store, gate, backend.submit)
    low = queued_task(store, tool_id="gate", priority=1)
    first_five = queued_task(store, tool_id="gate", priority=5)
    second_five = queued_task(store, tool_id="gate", priority=5)
    high = queued_task(store, tool_id="gate", priority=9)

    for task in (low, first_five, second_five, high):
        backend.submit(task)
    gate.open()

    _wait_for(store, [low, first_five, second_five, high], TaskStatus.COMPLETED)
    assert gate.ran == [
        blocker.task_id,
        high.task_id,
        first_five.task_id,
        second_five.task_id,
        low.task_id,
    ]


def test_a_full_queue_refuses_with_backend_full(
    thread_backends: ThreadBackendFactory, store: TaskStore, gate: Gate
) -> None:
    backend = thread_backends(workers=1, capacity=1)
    _hold_the_only_worker(store, gate, backend.submit)
    waiting = queued_task(store)
    backend.submit(waiting)

    with pytest.raises(BackendFull, match="queue is full") as raised:
        backend.submit(queued_task(store))
    with pytest.raises(BackendFull):
        backend.check_capacity()

    assert raised.value.retry_after > 0
    gate.open()
    _wait_for(store, [waiting], TaskStatus.COMPLETED)


def test_shutdown_finishes_running_tasks_and_leaves_the_rest_queued_for_a_restart(
    thread_backends: ThreadBackendFactory, store: TaskStore, gate: Gate
) -> None:
    backend = thread_backends(workers=1)
    blocker = _hold_the_only_worker(store, gate, backend.submit)
    low = queued_task(store, tool_id="gate", priority=1)
    high = queued_task(store, tool_id="gate", priority=9)
    backend.submit(low)
    backend.submit(high)

    stopper = threading.Thread(target=backend.shutdown, kwargs={"timeout": WAIT_SECONDS})
    stopper.start()
    # Two tasks and the worker's stop marker: the marker is in, so opening the gate is safe.
    wait_until(lambda: backend.health().counts["waiting"] == 3, what="shutdown to begin")
    with pytest.raises(BackendFull, match="shutting down"):
        backend.submit(queued_task(store))
    gate.open()
    stopper.join(WAIT_SECONDS)

    assert not stopper.is_alive()
    assert _status(store, blocker) is TaskStatus.COMPLETED
    assert (_status(store, low), _status(store, high)) == (TaskStatus.QUEUED, TaskStatus.QUEUED)
    assert backend.health().counts["alive"] == 0

    thread_backends(workers=1)  # a restarted process: recovers what was left QUEUED

    _wait_for(store, [low, high], TaskStatus.COMPLETED)
    assert gate.ran == [blocker.task_id, high.task_id, low.task_id]


def test_shutdown_returns_at_its_timeout_even_if_a_task_still_runs(
    thread_backends: ThreadBackendFactory, store: TaskStore, gate: Gate
) -> None:
    backend = thread_backends(workers=1)
    blocker = _hold_the_only_worker(store, gate, backend.submit)

    backend.shutdown(timeout=0)

    assert _status(store, blocker) is TaskStatus.PROCESSING
    gate.open()
    _wait_for(store, [blocker], TaskStatus.COMPLETED)


def test_health_reports_workers_and_whether_it_takes_work(
    thread_backends: ThreadBackendFactory,
) -> None:
    backend = thread_backends(workers=2, capacity=7)

    report = backend.health()
    assert (report.ok, report.state) == (True, "ok")
    assert report.counts == {"workers": 2, "alive": 2, "running": 0, "waiting": 0, "capacity": 7}

    backend.shutdown(timeout=WAIT_SECONDS)
    assert (backend.health().ok, backend.health().state) == (False, "stopped")


def test_a_hung_tool_past_its_hard_limit_gives_its_slot_back(
    store: TaskStore, thread_backends: ThreadBackendFactory
) -> None:
    pool = thread_backends(workers=1)
    hung = queued_task(store, tool_id="hangs")  # ignores everything; hard limit 1 s
    pool.submit(hung)
    _wait_for(store, [hung], TaskStatus.FAILED)

    after = [queued_task(store, tool_id="echo") for _ in range(3)]
    for task in after:
        pool.submit(task)

    _wait_for(store, after, TaskStatus.COMPLETED)  # the only thread is still stuck in `hangs`
    record = store.get(hung.task_id)
    assert record is not None
    assert record.error_code == "TIME_LIMIT_EXCEEDED"
    health = pool.health()
    assert health.ok
    assert (health.counts["workers"], health.counts["alive"]) == (1, 1)


def test_a_shutdown_that_times_out_releases_running_tasks_to_recovery(
    store: TaskStore, thread_backends: ThreadBackendFactory, gate: Gate
) -> None:
    pool = thread_backends(workers=1)
    running = _hold_the_only_worker(store, gate, pool.submit)

    pool.shutdown(timeout=0.1)

    assert [task.task_id for task in store.lost(limit=10)] == [running.task_id]
