"""`switchyard rollout`: a percentage out of range is refused before any request, naming why."""

from __future__ import annotations

import re

import pytest
from click.testing import Result
from typer.testing import CliRunner

from api.cli import rollout as rollout_cli
from api.cli.app import app
from api.keys import Role
from tests.api.conftest import ApiUnderTest, BuildApi, Keyholder
from tests.api.conftest import build_api as build_api  # the fixture
from tests.cli.conftest import serve_in_process
from tests.helpers import queued_task

UNREACHABLE = "http://127.0.0.1:9"  # nothing listens: a request would fail differently


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["set", "150", "--reason", "typo"], "150 is outside 0-100"),
        (["set", "nan", "--reason", "typo"], "nan is not a number"),
        (["preview", "--", "-1"], "-1 is outside 0-100"),
        (["set", "5", "--tool", "noop=101", "--reason", "x"], "'noop=101' is not TOOL=PERCENT"),
        (["set", "5", "--tool", "noop", "--reason", "x"], "'noop' is not TOOL=PERCENT"),
    ],
)
def test_a_percentage_outside_0_to_100_is_refused_with_the_reason(
    args: list[str], reason: str
) -> None:
    result = CliRunner().invoke(
        app,
        ["rollout", *args, "--url", UNREACHABLE, "--api-key", "sy_key"],
        env={"COLUMNS": "200"},
    )

    assert result.exit_code == 2
    assert reason in result.output
    assert "cannot reach the API" not in result.output


@pytest.fixture
def served(build_api: BuildApi, monkeypatch: pytest.MonkeyPatch) -> ApiUnderTest:
    """The app with a change limit of one; `switchyard rollout` talks to it in-process."""
    api = build_api(rollout_change_limit=1)

    serve_in_process(api.client, monkeypatch, rollout_cli)
    return api


def rollout(who: Keyholder, *args: str) -> Result:
    return CliRunner().invoke(
        app, ["rollout", *args, "--api-key", who.token], env={"COLUMNS": "200"}
    )


def test_a_refused_change_prints_the_wait_and_a_rollback_still_goes_through(
    served: ApiUnderTest,
) -> None:
    ops = served.issue("ops", Role.OPERATOR)
    assert rollout(ops, "set", "10", "--reason", "step").exit_code == 0

    refused = rollout(ops, "set", "20", "--reason", "too soon")
    assert refused.exit_code == 2
    (line,) = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert re.search(r"error: 429: too many rollout changes .* \(retry after \d+ s\)$", line)

    rolled = rollout(ops, "rollback", "--reason", "emergency")
    assert rolled.exit_code == 0, rolled.output
    assert "0 task(s) QUEUED on Celery moved to the thread backend" in rolled.output
    assert rollout(ops, "restore", "--reason", "over").exit_code == 0


def test_a_rollback_of_one_tool_prints_how_many_tasks_came_back(served: ApiUnderTest) -> None:
    ops = served.issue("ops", Role.OPERATOR)
    # Celery's share first: at 0 % the recovery sweep would hand these back before the rollback.
    assert rollout(ops, "set", "100", "--reason", "all to celery").exit_code == 0
    for _ in range(2):
        queued_task(served.runtime.store, tool_id="sleep", backend="celery")
    queued_task(served.runtime.store, tool_id="noop", backend="celery")

    rolled = rollout(ops, "rollback", "--tool", "sleep", "--reason", "sleep misbehaves")

    assert rolled.exit_code == 0, rolled.output
    assert "sleep=0%" in rolled.output
    assert "2 task(s) QUEUED on Celery moved to the thread backend" in rolled.output


def test_status_shows_what_made_the_rollout_and_what_this_environment_did(
    served: ApiUnderTest,
) -> None:
    ops = served.issue("ops", Role.OPERATOR)
    shown = rollout(ops, "status")
    assert shown.exit_code == 0, shown.output
    assert "environment (seed)" in shown.output
    assert "not set (the default), the first start: seeded the rollout" in shown.output
