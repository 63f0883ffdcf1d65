"""`switchyard status` without a task id: the API's /health as a table, exit 1 when degraded."""

from __future__ import annotations

import pytest
from click.testing import Result
from typer.testing import CliRunner

from api.cli import tasks as tasks_cli
from api.cli.app import app
from api.keys import Role
from backends.base import BackendHealth
from backends.testing import RecordingBackend
from tests.api.conftest import ApiUnderTest, BuildApi, Keyholder
from tests.api.conftest import build_api as build_api  # the fixture, shared with tests/api
from tests.cli.conftest import serve_in_process


class SaturatedPool(RecordingBackend):
    """A thread pool whose queue is full."""

    def health(self) -> BackendHealth:
        counts: dict[str, object] = {"workers": 2, "alive": 2, "running": 2, "waiting": 5}
        return BackendHealth(ok=False, state="saturated", counts=counts)


@pytest.fixture
def healthy(build_api: BuildApi, monkeypatch: pytest.MonkeyPatch) -> ApiUnderTest:
    """An app whose one backend takes work."""
    api = build_api()
    serve_in_process(api.client, monkeypatch, tasks_cli)
    return api


def switchyard(who: Keyholder, *args: str) -> Result:
    """Run a command as `who`, wide enough for the table."""
    return CliRunner().invoke(app, [*args, "--api-key", who.token], env={"COLUMNS": "120"})


def test_status_without_a_task_shows_health_and_the_backends(healthy: ApiUnderTest) -> None:
    ops = healthy.issue("ops", Role.OPERATOR)
    healthy.client.post("/tasks", json={"tool_id": "noop"}, headers=ops.headers)

    result = switchyard(ops, "status")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "ok  database: ok"
    thread = next(line for line in lines if line.lstrip("│ ").startswith("thread"))
    assert thread.split("│")[1:5] == [" thread  ", " ok    ", " -       ", " -       "]
    assert "1" in thread.split("│")[5]  # the task it recorded waits as a QUEUED row


def test_status_exits_1_and_says_why_when_degraded(
    build_api: BuildApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = build_api(backend=SaturatedPool(name="thread"))
    serve_in_process(api.client, monkeypatch, tasks_cli)

    result = switchyard(api.issue("ops", Role.OPERATOR), "status")

    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[:2] == [
        "degraded  database: ok",
        "  - the thread backend cannot take work (saturated)",
    ]
    assert "2/2" in result.output  # alive/workers


def test_follow_without_a_task_is_a_one_line_error(healthy: ApiUnderTest) -> None:
    result = switchyard(healthy.issue("ops", Role.OPERATOR), "status", "--follow")

    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: --follow needs a task id: `switchyard status TASK_ID --follow`"
    )
