"""`switchyard failed list` and `failed retry` against the real app, in-process.

The commands' HTTP client is swapped for the app's test client carrying the key the command was
given; what they print and how they exit is what an operator sees.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from api.cli import failed as failed_cli
from api.cli.app import app
from execution.status import TaskStatus
from tests.api.failed_stack import Stack, failed_stack
from tests.cli.conftest import serve_in_process


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """The app (see tests/api/failed_stack.py), served in-process to the commands."""
    with failed_stack(tmp_path) as stack:
        serve_in_process(stack.client, monkeypatch, failed_cli)
        yield stack


def switchyard(stack: Stack, *args: str, answer: str | None = None) -> Result:
    """Run `switchyard failed ...` with the operator's key, wide enough for whole rows; `answer`
    is what the operator types when asked."""
    token = stack.as_("ops")["Authorization"].removeprefix("Bearer ")
    return CliRunner().invoke(
        app, ["failed", *args, "--api-key", token], input=answer, env={"COLUMNS": "250"}
    )


def status_of(stack: Stack, task_id: str) -> TaskStatus:
    record = stack.runtime.store.get(task_id)
    assert record is not None
    return record.status


def test_failed_list_shows_each_failed_task_with_its_error_and_when_it_failed(
    stack: Stack,
) -> None:
    divided = stack.failed("alice", "divide")
    failed = stack.failed("alice", "fail", message="upstream said no")
    earlier = stack.failed("alice", "fail")
    stack.failed_ago(earlier, timedelta(hours=2))

    everything = switchyard(stack, "list")
    within = switchyard(stack, "list", "--since", "1h", "--tool", "fail")

    assert everything.exit_code == 0, everything.output
    header = everything.output.splitlines()[1]
    for column in ("task_id", "tool", "backend", "attempts", "error code", "message", "failed at"):
        assert column in header
    row = next(line for line in everything.output.splitlines() if failed in line)
    assert all(part in row for part in ("fail", "thread", "ToolFailure", "upstream said no"))
    assert divided in everything.output
    assert earlier in everything.output
    assert within.exit_code == 0, within.output
    assert failed in within.output
    assert earlier not in within.output
    assert divided not in within.output
    only_division = switchyard(stack, "list", "--code", "ZeroDivisionError").output
    assert divided in only_division
    assert failed not in only_division


def test_failed_list_says_when_nothing_matches_and_refuses_a_bad_window(stack: Stack) -> None:
    nothing = switchyard(stack, "list")
    bad = switchyard(stack, "list", "--since", "soon")

    assert (nothing.exit_code, nothing.output.strip()) == (0, "no failed task matches")
    assert bad.exit_code == 2
    assert "--since: 'soon' is not a window like 3600, 90s, 15m, 1h or 2d" in bad.output


def test_a_dry_run_shows_how_many_and_which_and_retries_nothing(stack: Stack) -> None:
    tasks = [stack.failed("alice", "divide") for _ in range(2)]
    other = stack.failed("alice", "fail")

    result = switchyard(stack, "retry", "--tool", "divide", "--since", "1h", "--dry-run")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "would retry 2 tasks of tool divide that failed in the last 1h"
    assert sorted(lines[1:]) == sorted(tasks)
    assert {status_of(stack, task_id) for task_id in [*tasks, other]} == {TaskStatus.FAILED}
    one = switchyard(stack, "retry", "--tool", "fail", "--since", "1h", "--dry-run").output
    assert one.splitlines() == ["would retry 1 task of tool fail that failed in the last 1h", other]


def test_retry_asks_with_the_count_and_retries_only_when_told_yes(stack: Stack) -> None:
    tasks = [stack.failed("alice", "divide") for _ in range(2)]
    stack.rollout(100)

    declined = switchyard(stack, "retry", "--tool", "divide", "--since", "1h", answer="n\n")
    unanswered = switchyard(stack, "retry", "--tool", "divide", "--since", "1h")
    assert {status_of(stack, task_id) for task_id in tasks} == {TaskStatus.FAILED}
    confirmed = switchyard(stack, "retry", "--tool", "divide", "--since", "1h", answer="y\n")

    question = "Retry 2 tasks of tool divide that failed in the last 1h? [y/N]"
    assert declined.exit_code == 1
    assert question in declined.output
    assert "nothing retried" in declined.output
    assert unanswered.exit_code == 1
    assert "not confirmed: nothing retried (--yes retries without asking)" in unanswered.output
    assert confirmed.exit_code == 0, confirmed.output
    assert "retried 2, skipped 0" in confirmed.output
    for task_id in tasks:
        assert task_id in confirmed.output
        assert status_of(stack, task_id) is TaskStatus.QUEUED


def test_retry_with_yes_asks_nothing_and_exits_1_when_a_task_is_skipped(stack: Stack) -> None:
    task_id = stack.failed("alice", "fail")
    stack.rollout(100)
    stack.celery.unavailable = "broker down for the test"

    result = switchyard(stack, "retry", "--since", "1h", "--yes")

    assert result.exit_code == 1, result.output
    assert "Retry" not in result.output
    assert "retried 0, skipped 1" in result.output
    assert f"skipped {task_id}: broker down for the test" in result.output


def test_retry_needs_since(stack: Stack) -> None:
    result = switchyard(stack, "retry", "--yes")

    assert result.exit_code == 2
    assert "--since" in result.output


def test_retry_with_nothing_matching_asks_nothing(stack: Stack) -> None:
    result = switchyard(stack, "retry", "--code", "WORKER_LOST", "--since", "2d")

    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        "nothing to retry: no tasks with error code WORKER_LOST that failed in the last 2d"
    )
