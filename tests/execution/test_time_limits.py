"""The soft time limit: a tool reporting progress past it is stopped, recorded as Celery's."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from execution.executor import ExecutorLimits, RunOutcome, TaskExecutor
from execution.hooks import Run
from execution.status import TaskStatus
from execution.store import TaskStore
from execution.time_limits import SoftTimeLimit, SoftTimeLimitExceeded
from execution.tools.registry import ToolRegistry
from tests.helpers import queued_task


def _run_started(seconds_ago: float, *, limit: float | None, store: TaskStore) -> Run:
    return Run(
        task=queued_task(store),
        tool=None,
        started=time.monotonic() - seconds_ago,
        soft_time_limit=limit,
    )


def test_progress_within_the_limit_passes(store: TaskStore) -> None:
    SoftTimeLimit().on_progress(_run_started(1, limit=60, store=store), 10, "fine")


def test_progress_past_the_limit_raises_in_the_tool(store: TaskStore) -> None:
    with pytest.raises(SoftTimeLimitExceeded):
        SoftTimeLimit().on_progress(_run_started(2, limit=1, store=store), 10, "late")


def test_a_run_without_a_limit_is_never_stopped(store: TaskStore) -> None:
    SoftTimeLimit().on_progress(_run_started(10**6, limit=None, store=store), 10, None)


def test_progress_after_the_soft_time_limit_fails_the_task(
    store: TaskStore, registry: ToolRegistry, data_dir: Path
) -> None:
    executor = TaskExecutor(
        store=store,
        registry=registry,
        data_dir=data_dir,
        limits=ExecutorLimits(soft_time_limit=0.001),
        hooks=(SoftTimeLimit(),),
    )
    task_id = queued_task(store, tool_id="tick-until-stopped").task_id

    outcome = executor.run(task_id)

    record = store.get(task_id)
    assert record is not None
    assert outcome is RunOutcome.FAILED
    assert record.status is TaskStatus.FAILED
    assert record.error_code == "SoftTimeLimitExceeded"
    assert record.error_message == "soft time limit 0.001s exceeded"
