"""The thread pool under a pause: its sweep leaves a paused tool's rows, a task it held before
the pause frees its slot without running, and after the resume the sweep runs them once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.thread_pool import ThreadPoolBackend
from execution.executor import TaskExecutor
from execution.records import TaskRecord
from execution.status import TaskStatus
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry
from tests.helpers import Paused, queued_task, wait_until
from tests.tools import Gate

SWEEP_SECONDS = 0.05


@pytest.fixture
def paused() -> Paused:
    """The pool's gate; nothing held until a test says so."""
    return Paused()


@pytest.fixture
def pool(
    store: TaskStore, registry: ToolRegistry, data_dir: Path, paused: Paused, gate: Gate
) -> Iterator[ThreadPoolBackend]:
    """One worker, sweeping often; not started."""
    executor = TaskExecutor(store=store, registry=registry, data_dir=data_dir, gate=paused)
    backend = ThreadPoolBackend(
        executor=executor, workers=1, capacity=10, sweep_interval=SWEEP_SECONDS
    )
    yield backend
    gate.open()
    backend.shutdown(timeout=10)


def _row(store: TaskStore, task: TaskRecord) -> TaskRecord:
    record = store.get(task.task_id)
    assert record is not None
    return record


def _ended(store: TaskStore, *tasks: TaskRecord) -> bool:
    return all(_row(store, task).status is TaskStatus.COMPLETED for task in tasks)


@pytest.mark.parametrize("held", ["echo", "*"])
def test_the_sweeps_leave_a_paused_tools_rows_until_it_is_resumed(
    pool: ThreadPoolBackend, store: TaskStore, paused: Paused, held: str
) -> None:
    left = [queued_task(store, tool_id="echo") for _ in range(3)]
    other = queued_task(store, tool_id="noop")
    paused.tools = frozenset({held})

    pool.start()  # its first sweep takes what a previous process left QUEUED
    if held == "echo":
        wait_until(lambda: _ended(store, other), what="the other tool's task to run")
    # A worker that took a paused task would have claimed it; sweeps come and go meanwhile.
    wait_until(lambda: pool.health().counts["waiting"] == 0, what="an empty pool queue")
    assert [_row(store, task) for task in left] == left

    paused.tools = frozenset()
    wait_until(lambda: _ended(store, *left, other), what="the resumed tasks to run")
    assert [_row(store, task).attempts for task in left] == [1, 1, 1]


def test_a_task_queued_in_the_pool_before_the_pause_frees_its_slot_without_running(
    pool: ThreadPoolBackend, store: TaskStore, paused: Paused, gate: Gate
) -> None:
    pool.start()
    blocker = queued_task(store, tool_id="gate")
    pool.submit(blocker)
    wait_until(lambda: blocker.task_id in gate.ran, what="the worker to take the blocker")
    handed = queued_task(store, tool_id="echo")
    pool.submit(handed)
    paused.tools = frozenset({"echo"})

    gate.open()
    after = queued_task(store, tool_id="noop")
    pool.submit(after)
    wait_until(lambda: _ended(store, blocker, after), what="the tasks around it to run")

    row = _row(store, handed)
    assert (row.status, row.attempts, row.dispatched_at) == (TaskStatus.QUEUED, 0, None)
