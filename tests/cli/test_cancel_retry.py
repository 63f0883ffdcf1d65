"""`switchyard cancel` and `switchyard retry` against the real app and thread pool, in-process.

The commands' HTTP client is swapped for the app's test client, carrying the key the command
was given; what they print and how they exit is what a user sees.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from api.cli import tasks as tasks_cli
from api.cli.app import app
from execution.records import TaskRecord
from execution.status import TaskStatus
from tests.api.conftest import ApiUnderTest, Keyholder
from tests.api.reliability_tools import Tools, reliable_api
from tests.cli.conftest import serve_in_process
from tests.helpers import wait_until

SERVER_LOG = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[|\{\"")
"""How a log line of the in-process app starts (structlog's console or JSON format)."""


@pytest.fixture
def tools() -> Tools:
    """The controllable tools; their `release` is set when the app stops."""
    return Tools()


@pytest.fixture
def served(tmp_path: Path, tools: Tools, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiUnderTest]:
    """The app over a one-worker thread pool; the commands talk to it in-process."""
    with reliable_api(tmp_path, tools, background_workers=1) as api:
        serve_in_process(api.client, monkeypatch, tasks_cli)
        yield api


@pytest.fixture
def alice(served: ApiUnderTest) -> Keyholder:
    """A user."""
    return served.issue("alice")


def switchyard(who: Keyholder, *args: str) -> Result:
    """Run a command as `who`, 80 columns wide."""
    return CliRunner().invoke(app, [*args, "--api-key", who.token], env={"COLUMNS": "80"})


def create(api: ApiUnderTest, who: Keyholder, tool_id: str) -> str:
    """A new task of `who`; its id."""
    response = api.client.post("/tasks", json={"tool_id": tool_id}, headers=who.headers)
    assert response.status_code == 201, response.text
    task_id: str = response.json()["task_id"]
    return task_id


def row(api: ApiUnderTest, task_id: str) -> TaskRecord:
    """The task's row as it is now."""
    record = api.runtime.store.get(task_id)
    assert record is not None
    return record


def ended(api: ApiUnderTest, task_id: str) -> TaskRecord:
    """The task's row once it has ended."""

    def done() -> TaskRecord | None:
        record = row(api, task_id)
        return record if record.status.is_terminal else None

    return wait_until(done, what=f"task {task_id} to end")


def printed(text: str) -> list[str]:
    """The command's own lines: without the log lines of the app, which runs in-process."""
    return [line for line in text.splitlines() if not SERVER_LOG.match(line)]


def assert_one_line_error(result: Result, expected: str) -> None:
    """The command failed with exactly `expected` on stderr, one line, no traceback."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    assert printed(result.stdout) == []
    assert printed(result.stderr) == [f"error: {expected}"]


def test_cancel_of_a_running_task_says_it_was_asked_to_stop_and_it_ends_cancelled(
    served: ApiUnderTest, alice: Keyholder, tools: Tools
) -> None:
    task_id = create(served, alice, "blocks")
    wait_until(lambda: task_id in tools.started, what="the tool to start")

    result = switchyard(alice, "cancel", task_id)

    assert result.exit_code == 0, result.output
    assert printed(result.stdout) == [f"task {task_id} is running: asked to stop"]
    assert ended(served, task_id).status is TaskStatus.CANCELLED


def test_cancel_of_a_waiting_task_says_it_is_cancelled(
    served: ApiUnderTest, alice: Keyholder, tools: Tools
) -> None:
    running = create(served, alice, "blocks")
    wait_until(lambda: running in tools.started, what="the only worker to start a tool")
    waiting = create(served, alice, "noop")

    result = switchyard(alice, "cancel", waiting)

    assert result.exit_code == 0, result.output
    assert printed(result.stdout) == [f"task {waiting} CANCELLED"]
    assert row(served, waiting).status is TaskStatus.CANCELLED


def test_retry_of_a_failed_task_says_which_attempt_comes_and_it_completes(
    served: ApiUnderTest, alice: Keyholder
) -> None:
    task_id = create(served, alice, "fails-once")
    assert ended(served, task_id).status is TaskStatus.FAILED

    result = switchyard(alice, "retry", task_id)

    assert result.exit_code == 0, result.output
    assert printed(result.stdout) == [f"task {task_id} QUEUED on thread (attempt 2)"]
    record = ended(served, task_id)
    assert (record.status, record.attempts, record.result) == (
        TaskStatus.COMPLETED,
        2,
        {"attempt": 2},
    )


def test_retry_of_a_task_cancelled_before_it_ran_says_attempt_1(
    served: ApiUnderTest, alice: Keyholder, tools: Tools
) -> None:
    running = create(served, alice, "blocks")
    wait_until(lambda: running in tools.started, what="the only worker to start a tool")
    waiting = create(served, alice, "noop")
    assert switchyard(alice, "cancel", waiting).exit_code == 0

    result = switchyard(alice, "retry", waiting)

    assert result.exit_code == 0, result.output
    assert printed(result.stdout) == [f"task {waiting} QUEUED on thread (attempt 1)"]
    tools.release.set()
    assert ended(served, waiting).status is TaskStatus.COMPLETED


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("cancel", "only a waiting or running task can be cancelled"),
        ("retry", "only a FAILED or CANCELLED task can be retried"),
    ],
)
def test_a_conflict_is_one_line_on_stderr_and_a_failed_exit(
    served: ApiUnderTest, alice: Keyholder, command: str, reason: str
) -> None:
    task_id = create(served, alice, "noop")
    assert ended(served, task_id).status is TaskStatus.COMPLETED

    result = switchyard(alice, command, task_id)

    assert_one_line_error(result, f"409: task {task_id} is COMPLETED; {reason}")
    assert (row(served, task_id).status, row(served, task_id).attempts) == (TaskStatus.COMPLETED, 1)


@pytest.mark.parametrize("command", ["cancel", "retry"])
def test_an_unknown_task_is_one_line_on_stderr_and_a_failed_exit(
    served: ApiUnderTest, alice: Keyholder, command: str
) -> None:
    result = switchyard(alice, command, "no-such-task")

    assert_one_line_error(result, "404: no task no-such-task")


@pytest.mark.parametrize("command", ["cancel", "retry"])
def test_another_users_task_is_not_found_and_left_alone(
    served: ApiUnderTest, alice: Keyholder, tools: Tools, command: str
) -> None:
    bob = served.issue("bob")
    task_id = create(served, alice, "blocks" if command == "cancel" else "fails-once")
    if command == "cancel":
        wait_until(lambda: task_id in tools.started, what="the tool to start")
    else:
        assert ended(served, task_id).status is TaskStatus.FAILED
    before = row(served, task_id)

    result = switchyard(bob, command, task_id)

    assert_one_line_error(result, f"404: no task {task_id}")
    after = row(served, task_id)
    assert (after.status, after.attempts, after.cancel_requested_at) == (
        before.status,
        before.attempts,
        None,
    )
