"""`switchyard queue pause|resume`: one line saying what is paused and how many tasks were
handed over; `rollout status` shows the pause; a refusal is one line with the reason."""

from __future__ import annotations

import pytest
from click.testing import Result
from typer.testing import CliRunner

from api.cli import pause as pause_cli
from api.cli import rollout as rollout_cli
from api.cli.app import app
from api.keys import Role
from tests.api.conftest import ApiUnderTest, BuildApi, Keyholder
from tests.api.conftest import build_api as build_api  # the fixture
from tests.cli.conftest import serve_in_process


@pytest.fixture
def served(build_api: BuildApi, monkeypatch: pytest.MonkeyPatch) -> ApiUnderTest:
    """The app; the commands talk to it in-process."""
    api = build_api()

    serve_in_process(api.client, monkeypatch, pause_cli, rollout_cli)
    return api


@pytest.fixture
def ops(served: ApiUnderTest) -> Keyholder:
    return served.issue("ops", Role.OPERATOR)


def switchyard(who: Keyholder, *args: str) -> Result:
    return CliRunner().invoke(app, [*args, "--api-key", who.token], env={"COLUMNS": "200"})


def test_pause_then_resume_one_tool(served: ApiUnderTest, ops: Keyholder) -> None:
    paused = switchyard(ops, "queue", "pause", "--tool", "noop", "--reason", "deploy")
    assert paused.exit_code == 0, paused.output
    assert "dispatch paused for noop (rollout version 2)" in paused.output

    status = switchyard(ops, "rollout", "status")
    assert "dispatch PAUSED" in status.output
    assert "noop (`switchyard queue resume`)" in status.output

    held = served.client.post("/tasks", json={"tool_id": "noop", "payload": {}})
    assert held.json()["status"] == "QUEUED"
    resumed = switchyard(ops, "queue", "resume", "--tool", "noop", "--reason", "deployed")
    assert resumed.exit_code == 0, resumed.output
    assert "dispatch resumed for noop (rollout version 3): 1 waiting task(s) handed to their " in (
        resumed.output
    )
    assert "dispatch PAUSED" not in switchyard(ops, "rollout", "status").output

    history = switchyard(ops, "rollout", "history")
    assert "paused: noop" in history.output
    assert "paused: no tool" in history.output


def test_pause_all_and_a_refused_resume_of_one_tool(served: ApiUnderTest, ops: Keyholder) -> None:
    paused = switchyard(ops, "queue", "pause", "--reason", "incident")
    assert "dispatch paused for every tool" in paused.output

    refused = switchyard(ops, "queue", "resume", "--tool", "noop", "--reason", "one")
    assert refused.exit_code == 2
    (line,) = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert line.startswith("error: 409: dispatch is paused for every tool, so noop cannot")

    resumed = switchyard(ops, "queue", "resume", "--reason", "over")
    assert "dispatch resumed for every tool (rollout version 3): 0 waiting task(s)" in (
        resumed.output
    )


def test_a_reason_is_required_and_an_unknown_tool_is_one_line(
    served: ApiUnderTest, ops: Keyholder
) -> None:
    missing = switchyard(ops, "queue", "pause")
    assert missing.exit_code == 2
    assert "--reason" in missing.output

    unknown = switchyard(ops, "queue", "pause", "--tool", "nope", "--reason", "typo")
    assert unknown.exit_code == 2
    assert "error: 422: " in unknown.output
    assert "unknown tool 'nope'" in unknown.output
    assert "Traceback" not in unknown.output
