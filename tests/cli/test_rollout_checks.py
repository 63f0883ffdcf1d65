"""`switchyard rollout compare` and `advance` against the real app, in-process.

The commands' HTTP client is swapped for the app's test client carrying the key the command was
given; what they print and how they exit is what an operator sees.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from api.cli import rollout_checks
from api.cli.app import app
from api.keys import Role
from api.runtime import Runtime
from backends.testing import RecordingBackend
from dispatch.rollout.control import RolloutChange
from execution.tools.registry import load_registry
from tests.api.conftest import api_settings
from tests.cli.conftest import serve_in_process
from tests.dispatch.rollout.cohort_rows import Clock, cohort_of, install_clock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Rows, rollout changes and the route's `now` on a clock the test moves."""
    return install_clock(monkeypatch)


@pytest.fixture
def runtime(tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """The app (judging from 3 samples) served in-process to the commands."""
    runtime = Runtime.build(
        api_settings(tmp_path, rollout_min_samples=3),
        backends={"thread": RecordingBackend(name="thread")},
        registry=load_registry(["execution.tools.builtin"]),
    )
    runtime.prepare_database()
    with TestClient(create_app(runtime)) as client:
        serve_in_process(client, monkeypatch, rollout_checks)
        yield runtime


@pytest.fixture
def operator_key(runtime: Runtime) -> str:
    """An operator's key."""
    return runtime.keys.create(user_id="ops-oncall", role=Role.OPERATOR).token


def switchyard(key: str, *args: str) -> Result:
    """Run `switchyard rollout ...` with `key`, wide enough for whole table rows."""
    return CliRunner().invoke(app, ["rollout", *args, "--api-key", key], env={"COLUMNS": "200"})


def at(runtime: Runtime, percentage: float, clock: Clock) -> None:
    """The rollout set to `percentage` between the tasks before it and after it."""
    clock.advance(1)
    state = runtime.rollout.store.load()
    assert state is not None
    runtime.rollout_control.set(
        RolloutChange(percentage=percentage),
        actor="ops-oncall",
        reason="set by the test",
        expected_version=state.version,
    )
    clock.advance(1)


def test_compare_shows_each_backend_and_tool_and_marks_too_few_samples(
    runtime: Runtime, operator_key: str, clock: Clock
) -> None:
    at(runtime, 5, clock)
    cohort_of(runtime.store, clock, backend="celery", completed=3, failed=1, run=2.0)
    cohort_of(runtime.store, clock, backend="thread", completed=2, run=1.0)
    clock.advance(1)

    result = switchyard(operator_key, "compare")

    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()]
    header = "since the last rollout change (version 2, by ops-oncall): 6 finished tasks"
    assert header in result.stdout
    assert ["thread", "(all)", "2", "0", "0.00%", "1s", "1s", "1s", "1s", "2", "(too", "few)"] in [
        [cell for cell in row if cell not in "│┃|"] for row in rows
    ]
    assert any("celery" in row and "25.00%" in row and "noop" in row for row in rows)


def test_compare_over_a_window_as_json(runtime: Runtime, operator_key: str, clock: Clock) -> None:
    cohort_of(runtime.store, clock, backend="celery", completed=1, failed=1)
    at(runtime, 5, clock)

    result = switchyard(operator_key, "compare", "--window", "1h", "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["basis"] == "over the last 3600 s"
    assert [(c["backend"], c["failure_rate"]) for c in report["backends"]] == [("celery", 50.0)]


@pytest.mark.parametrize("window", ["1x", "0", "h", "-5"])
def test_a_window_that_is_not_a_duration_is_refused(operator_key: str, window: str) -> None:
    result = switchyard(operator_key, "compare", "--window", window)

    assert result.exit_code == 2
    assert "is not a window like 3600, 90s, 15m, 1h or 2d" in result.output


def test_advance_from_zero_takes_the_first_step(operator_key: str) -> None:
    result = switchyard(operator_key, "advance", "--reason", "step 1")

    assert result.exit_code == 0, result.output
    assert "first step from 0%: no Celery cohort to judge yet" in result.stdout
    assert "advanced from 0% to 5%" in result.stdout


def test_a_refused_advance_prints_each_check_and_exits_1_naming_the_failed_ones(
    runtime: Runtime, operator_key: str, clock: Clock
) -> None:
    at(runtime, 5, clock)
    cohort_of(runtime.store, clock, backend="celery", completed=3, run=3.0)
    cohort_of(runtime.store, clock, backend="thread", completed=3, run=1.0)

    result = switchyard(operator_key, "advance", "--reason", "step 2")

    assert result.exit_code == 1
    assert "passed  samples: celery 3, threads 3 (min 3 each)" in result.stdout
    assert "FAILED  p95_run_time: celery 3s vs threads 1s (max 1.2x)" in result.stdout
    assert "not advancing from 5% to 25%: failed p95_run_time" in result.stderr
    state = runtime.rollout.store.load()
    assert state is not None
    assert state.percentage == 5


def test_a_forced_advance_says_it_was_forced(
    runtime: Runtime, operator_key: str, clock: Clock
) -> None:
    at(runtime, 25, clock)

    result = switchyard(operator_key, "advance", "--reason", "staging soak", "--force")

    assert result.exit_code == 0, result.output
    assert "FAILED  samples" in result.stdout
    assert "advanced from 25% to 50% (forced past the failed checks)" in result.stdout


def test_advance_with_a_user_key_is_refused_in_one_line(runtime: Runtime) -> None:
    user = runtime.keys.create(user_id="alice", role=Role.USER).token

    result = switchyard(user, "advance", "--reason", "step 1")

    assert result.exit_code == 2
    assert result.stderr.strip() == "error: 403: this needs an operator key"
