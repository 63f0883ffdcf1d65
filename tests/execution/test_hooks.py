"""Executor hooks: called in order at each moment of a run, with what they need; errors surface."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from execution.executor import RunOutcome, TaskExecutor
from execution.hooks import ExecutorHook, Failure, Run
from execution.status import TaskStatus
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry
from tests.helpers import claim, queued_task


class Recorder(ExecutorHook):
    """Writes down every moment it sees, with the task's status in the store at that moment."""

    def __init__(self, store: TaskStore, name: str = "hook") -> None:
        self.store = store
        self.name = name
        self.seen: list[tuple[str, ...]] = []

    def _status(self, task_id: str) -> str:
        record = self.store.get(task_id)
        return record.status if record else "missing"

    def before_claim(self, task_id: str) -> None:
        self.seen.append((self.name, "before_claim", self._status(task_id)))

    def after_claim(self, run: Run) -> None:
        assert run.tool is not None
        self.seen.append(
            (self.name, "after_claim", self._status(run.task.task_id), run.tool.tool_id)
        )

    def on_progress(self, run: Run, percent: int, message: str | None) -> None:
        self.seen.append((self.name, "on_progress", str(percent)))

    def on_success(self, run: Run, result: Any) -> None:
        self.seen.append((self.name, "on_success", self._status(run.task.task_id), str(result)))

    def on_failure(self, run: Run, failure: Failure) -> None:
        status = self._status(run.task.task_id)
        self.seen.append((self.name, "on_failure", status, failure.error_code, failure.message))


def _executor(
    store: TaskStore, registry: ToolRegistry, data_dir: Path, *hooks: ExecutorHook
) -> TaskExecutor:
    return TaskExecutor(store=store, registry=registry, data_dir=data_dir, hooks=hooks)


def test_hooks_see_each_moment_of_a_successful_run_in_order(
    store: TaskStore, registry: ToolRegistry, data_dir: Path
) -> None:
    first, second = Recorder(store, "first"), Recorder(store, "second")
    task_id = queued_task(store, tool_id="sleep", payload={"seconds": 0, "steps": 2}).task_id

    outcome = _executor(store, registry, data_dir, first, second).run(task_id)

    assert outcome is RunOutcome.COMPLETED
    assert first.seen == [
        ("first", "before_claim", "QUEUED"),
        ("first", "after_claim", "PROCESSING", "sleep"),
        ("first", "on_progress", "50"),
        ("first", "on_progress", "100"),
        ("first", "on_success", "COMPLETED", "{'slept_seconds': 0.0}"),
    ]
    assert [moment[1:] for moment in second.seen] == [moment[1:] for moment in first.seen]


def test_a_failure_reaches_the_hooks_after_it_is_stored(
    store: TaskStore, registry: ToolRegistry, data_dir: Path
) -> None:
    hook = Recorder(store)
    task_id = queued_task(store, tool_id="divide").task_id

    assert _executor(store, registry, data_dir, hook).run(task_id) is RunOutcome.FAILED

    assert hook.seen[-1] == (
        "hook",
        "on_failure",
        "FAILED",
        "ZeroDivisionError",
        "division by zero",
    )


def test_an_unknown_tool_fails_without_after_claim(
    store: TaskStore, registry: ToolRegistry, data_dir: Path
) -> None:
    hook = Recorder(store)
    task_id = queued_task(store, tool_id="gone").task_id

    assert _executor(store, registry, data_dir, hook).run(task_id) is RunOutcome.FAILED

    assert [moment[1] for moment in hook.seen] == ["before_claim", "on_failure"]


def test_a_copy_that_is_not_claimed_reaches_only_before_claim(
    store: TaskStore, registry: ToolRegistry, data_dir: Path
) -> None:
    hook = Recorder(store)
    task_id = queued_task(store).task_id
    assert claim(store, task_id) is not None

    outcome = _executor(store, registry, data_dir, hook).run(task_id)

    assert outcome is RunOutcome.NOT_CLAIMED
    assert [moment[1] for moment in hook.seen] == ["before_claim"]


class Refuses(ExecutorHook):
    """Stops every tool before it starts, as a lease or a concurrency limit might."""

    def after_claim(self, run: Run) -> None:
        raise RuntimeError("not now")


def test_an_error_in_a_hook_surfaces_as_the_attempt_s_failure(
    store: TaskStore, registry: ToolRegistry, data_dir: Path
) -> None:
    task_id = queued_task(store, tool_id="echo").task_id

    outcome = _executor(store, registry, data_dir, Refuses()).run(task_id)

    record = store.get(task_id)
    assert record is not None
    assert outcome is RunOutcome.FAILED
    assert (record.status, record.error_code) == (TaskStatus.FAILED, "ExecutorError")
    assert record.error_message == "RuntimeError: not now"


def test_the_base_hook_does_nothing_at_every_moment(
    store: TaskStore, registry: ToolRegistry, data_dir: Path
) -> None:
    task_id = queued_task(store, tool_id="echo").task_id

    assert _executor(store, registry, data_dir, ExecutorHook()).run(task_id) is RunOutcome.COMPLETED


@pytest.mark.parametrize("hooks", [(), (ExecutorHook(),)])
def test_rows_are_the_same_with_or_without_hooks(
    store: TaskStore, registry: ToolRegistry, data_dir: Path, hooks: tuple[ExecutorHook, ...]
) -> None:
    task_id = queued_task(store, tool_id="sleep", payload={"seconds": 0, "steps": 3}).task_id

    _executor(store, registry, data_dir, *hooks).run(task_id)

    assert [(e.status, e.progress) for e in store.events(task_id)][-2:] == [
        (TaskStatus.PROCESSING, 100),
        (TaskStatus.COMPLETED, 100),
    ]
