"""`switchyard submit --wait` and `status --follow`: they follow the task's event stream.

As in test_cancel_retry, the commands talk in-process to the real app over a real thread pool;
the requests they send are recorded, to tell a stream from polling.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result
from httpx_sse import EventSource, connect_sse
from typer.testing import CliRunner

from api.cli import tasks as tasks_cli
from api.cli.app import app
from tests.api.conftest import ApiUnderTest, Keyholder
from tests.api.reliability_tools import Tools, reliable_api
from tests.cli.conftest import serve_in_process
from tests.cli.test_cancel_retry import assert_one_line_error, create, printed

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def requests() -> list[str]:
    """`METHOD path` of every request the commands send."""
    return []


@pytest.fixture
def served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, requests: list[str]
) -> Iterator[ApiUnderTest]:
    """The app over a real thread pool; the commands talk to it in-process."""
    with reliable_api(tmp_path, Tools()) as api:

        def record(request: httpx.Request) -> None:
            requests.append(f"{request.method} {request.url.path}")

        api.client.event_hooks["request"] = [record]
        serve_in_process(api.client, monkeypatch, tasks_cli)
        monkeypatch.setattr(tasks_cli, "STREAM_BACKOFF_SECONDS", 0.0)
        yield api


@pytest.fixture
def alice(served: ApiUnderTest) -> Keyholder:
    """A user."""
    return served.issue("alice")


def switchyard(who: Keyholder, *args: str) -> Result:
    """Run a command as `who`, 80 columns wide."""
    return CliRunner().invoke(app, [*args, "--api-key", who.token], env={"COLUMNS": "80"})


def field(result: Result, name: str) -> str:
    """The value of one row of the task table the command printed."""
    rows = [line.strip("│ ").split() for line in printed(result.stdout) if f" {name} " in line]
    assert len(rows) == 1, result.stdout
    return rows[0][-1]


def streams(requests: list[str]) -> list[str]:
    """The requests that opened a task's event stream."""
    return [r for r in requests if r.endswith("/stream")]


def test_submit_wait_follows_the_stream_and_prints_the_completed_task(
    served: ApiUnderTest, alice: Keyholder, requests: list[str]
) -> None:
    result = switchyard(
        alice, "submit", "sleep", "--payload", '{"seconds": 0.3, "steps": 3}', "--wait"
    )

    assert result.exit_code == 0, result.output
    task_id = printed(result.stdout)[0].split()[1]
    assert field(result, "status") == "COMPLETED"
    assert field(result, "progress") == "100"
    assert streams(requests) == [f"GET /tasks/{task_id}/stream"]
    # Only the create and the final read of the whole task: no polling.
    assert sorted(set(requests) - set(streams(requests))) == [
        f"GET /tasks/{task_id}",
        "POST /tasks",
    ]
    assert requests.count(f"GET /tasks/{task_id}") == 1
    assert '"slept_seconds": 0.3' in result.stdout


def test_submit_wait_of_a_failing_task_prints_failed_and_exits_1(
    served: ApiUnderTest, alice: Keyholder, requests: list[str]
) -> None:
    result = switchyard(alice, "submit", "fail", "--wait")

    assert result.exit_code == 1, result.output
    assert field(result, "status") == "FAILED"
    assert field(result, "error_code") != ""
    assert len(streams(requests)) == 1
    assert "Traceback" not in result.output


def test_status_follow_follows_a_task_to_its_end(
    served: ApiUnderTest, alice: Keyholder, requests: list[str]
) -> None:
    task_id = create(served, alice, "noop")
    requests.clear()

    result = switchyard(alice, "status", task_id, "--follow")

    assert result.exit_code == 0, result.output
    assert field(result, "status") == "COMPLETED"
    assert streams(requests) == [f"GET /tasks/{task_id}/stream"]


def test_status_without_follow_reads_the_task_once(
    served: ApiUnderTest, alice: Keyholder, requests: list[str]
) -> None:
    task_id = create(served, alice, "noop")
    requests.clear()

    result = switchyard(alice, "status", task_id)

    assert result.exit_code == 0, result.output
    assert requests == [f"GET /tasks/{task_id}"]


def test_status_follow_of_another_users_task_is_one_line_404(
    served: ApiUnderTest, alice: Keyholder
) -> None:
    task_id = create(served, alice, "noop")
    bob = served.issue("bob")

    result = switchyard(bob, "status", task_id, "--follow")

    assert_one_line_error(result, f"404: no task {task_id}")


def test_status_follow_with_a_revoked_key_is_one_line_401(
    served: ApiUnderTest, alice: Keyholder
) -> None:
    task_id = create(served, alice, "noop")
    served.runtime.keys.revoke(alice.key_id)

    result = switchyard(alice, "status", task_id, "--follow")

    assert_one_line_error(result, "401: invalid API key: unknown, malformed or revoked")


def breaking(times: int | None, calls: list[str]) -> Any:
    """A connect_sse whose connection fails the first `times` calls (None: every call)."""

    @contextmanager
    def connect(
        client: httpx.Client, method: str, url: str, **kwargs: Any
    ) -> Iterator[EventSource]:
        calls.append(url)
        if times is None or len(calls) <= times:
            raise httpx.RemoteProtocolError("peer closed connection without sending complete body")
        opened: AbstractContextManager[EventSource] = connect_sse(client, method, url, **kwargs)
        with opened as source:
            yield source

    return connect


def test_a_broken_stream_is_opened_again(
    served: ApiUnderTest, alice: Keyholder, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(tasks_cli, "connect_sse", breaking(2, calls))

    result = switchyard(alice, "submit", "noop", "--wait")

    assert result.exit_code == 0, result.output
    assert len(calls) == 3
    assert field(result, "status") == "COMPLETED"
    assert printed(result.stderr) == []


def test_a_stream_that_keeps_breaking_gives_way_to_polling_without_a_traceback(
    served: ApiUnderTest, alice: Keyholder, monkeypatch: pytest.MonkeyPatch, requests: list[str]
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(tasks_cli, "connect_sse", breaking(None, calls))

    result = switchyard(alice, "submit", "noop", "--wait")

    assert result.exit_code == 0, result.output
    assert len(calls) == tasks_cli.STREAM_ATTEMPTS
    assert field(result, "status") == "COMPLETED"
    assert printed(result.stderr) == [
        "warning: the task's event stream broke (peer closed connection without sending "
        "complete body); polling"
    ]
    assert "Traceback" not in result.output
