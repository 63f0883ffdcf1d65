"""A copy of a task handed over before its tool was paused does not start: the executor marks
it never handed over and returns HELD; with nothing paused it costs no read at all."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, update

from execution.dispatch_gate import held_message
from execution.executor import RunOutcome, TaskExecutor
from execution.hooks import ExecutorHook
from execution.models import utcnow
from execution.records import TASKS, TaskRecord
from execution.status import TaskStatus
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry
from tests.helpers import Paused, claim, queued_task


class CountingStore(TaskStore):
    """The real store, counting the single-row reads the executor makes."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.reads = 0

    def get(self, task_id: str) -> TaskRecord | None:
        self.reads += 1
        return super().get(task_id)


class Moments(ExecutorHook):
    """Which hook moments a run reached."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def before_claim(self, task_id: str) -> None:
        self.seen.append("before_claim")

    def after_claim(self, run: Any) -> None:
        self.seen.append("after_claim")


@pytest.fixture
def counting(engine: Engine) -> CountingStore:
    return CountingStore(engine)


def _executor(
    store: TaskStore, registry: ToolRegistry, data_dir: Path, gate: Paused, *hooks: ExecutorHook
) -> TaskExecutor:
    return TaskExecutor(store=store, registry=registry, data_dir=data_dir, gate=gate, hooks=hooks)


def _get(store: TaskStore, task_id: str) -> TaskRecord:
    record = store.get(task_id)
    assert record is not None
    return record


@pytest.mark.parametrize("paused", ["echo", "*"])
def test_a_queued_copy_of_a_paused_tool_is_held_not_claimed(
    store: TaskStore, registry: ToolRegistry, data_dir: Path, paused: str
) -> None:
    moments = Moments()
    gate = Paused(paused)
    executor = _executor(store, registry, data_dir, gate, moments)
    task = queued_task(store, tool_id="echo")

    assert executor.run(task.task_id, recorded_for="thread") is RunOutcome.HELD

    row = _get(store, task.task_id)
    assert (row.status, row.attempts, row.dispatched_at) == (TaskStatus.QUEUED, 0, None)
    assert row.message == held_message("echo")
    assert [e.message for e in store.events(task.task_id)][-1] == held_message("echo")
    assert moments.seen == ["before_claim"]

    gate.tools = frozenset()  # resumed: the copy handed over again runs, once
    assert executor.run(task.task_id, recorded_for="thread") is RunOutcome.COMPLETED
    assert _get(store, task.task_id).attempts == 1


def test_other_tools_run_while_one_is_paused(
    store: TaskStore, registry: ToolRegistry, data_dir: Path
) -> None:
    executor = _executor(store, registry, data_dir, Paused("sleep"))
    task = queued_task(store, tool_id="echo")

    assert executor.run(task.task_id) is RunOutcome.COMPLETED


def test_with_nothing_paused_the_executor_reads_no_row_before_its_claim(
    counting: CountingStore, registry: ToolRegistry, data_dir: Path
) -> None:
    executor = _executor(counting, registry, data_dir, Paused())
    task = queued_task(counting, tool_id="echo")

    assert executor.run(task.task_id) is RunOutcome.COMPLETED
    assert counting.reads == 0


def test_a_lost_attempt_of_a_paused_tool_is_left_to_recovery(
    store: TaskStore, registry: ToolRegistry, data_dir: Path
) -> None:
    task = queued_task(store, tool_id="echo")
    assert claim(store, task.task_id, lease_seconds=-1) is not None  # its process died

    executor = _executor(store, registry, data_dir, Paused("echo"))
    assert executor.run(task.task_id) is RunOutcome.HELD

    row = _get(store, task.task_id)
    assert (row.status, row.attempts) == (TaskStatus.PROCESSING, 1)  # untouched


@pytest.mark.parametrize("case", ["moved to celery", "in its backoff", "ended"])
def test_a_copy_the_claim_would_refuse_anyway_is_not_marked_held(
    store: TaskStore, registry: ToolRegistry, data_dir: Path, case: str
) -> None:
    task = queued_task(store, tool_id="echo")
    if case == "moved to celery":
        store.move_backend(task.task_id, from_backend="thread", to_backend="celery", reason="t")
    elif case == "in its backoff":
        later = utcnow() + timedelta(minutes=5)
        with store.engine.begin() as conn:
            conn.execute(
                update(TASKS).where(TASKS.c.task_id == task.task_id).values(run_after=later)
            )
    else:
        store.cancel(task.task_id, reason="cancelled by ann")
    before = _get(store, task.task_id)

    executor = _executor(store, registry, data_dir, Paused("echo"))
    assert executor.run(task.task_id, recorded_for="thread") is RunOutcome.NOT_CLAIMED

    assert _get(store, task.task_id) == before
