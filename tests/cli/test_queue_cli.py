"""`switchyard queue purge` and `switchyard queue stats` against the real app, in-process.

The commands' HTTP client is swapped for the app's test client; what they print, ask and how
they exit is what an operator sees.
"""

from __future__ import annotations

import pytest
from click.testing import Result
from typer.testing import CliRunner

from api.cli import queue as queue_cli
from api.cli.app import app
from api.keys import Role
from execution.status import TaskStatus
from tests.api.conftest import ApiUnderTest, BuildApi, Keyholder
from tests.api.conftest import build_api as build_api  # the fixture, shared with tests/api
from tests.cli.conftest import serve_in_process


@pytest.fixture
def served(build_api: BuildApi, monkeypatch: pytest.MonkeyPatch) -> ApiUnderTest:
    """An app whose thread backend keeps every task QUEUED; the commands talk to it."""
    api = build_api()

    serve_in_process(api.client, monkeypatch, queue_cli)
    return api


@pytest.fixture
def ops(served: ApiUnderTest) -> Keyholder:
    """An operator."""
    return served.issue("ops", Role.OPERATOR)


def switchyard(who: Keyholder, *args: str, answer: str | None = None) -> Result:
    """Run a command as `who`, 120 columns wide, typing `answer` at a prompt."""
    return CliRunner().invoke(
        app, [*args, "--api-key", who.token], input=answer, env={"COLUMNS": "120"}
    )


def _queued(api: ApiUnderTest, who: Keyholder, tool_id: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        response = api.client.post("/tasks", json={"tool_id": tool_id}, headers=who.headers)
        assert response.status_code == 201, response.text
        ids.append(response.json()["task_id"])
    return ids


def _statuses(api: ApiUnderTest, ids: list[str]) -> set[TaskStatus]:
    rows = [api.runtime.store.get(task_id) for task_id in ids]
    return {row.status for row in rows if row is not None}


def test_a_dry_run_shows_what_would_go_and_changes_nothing(
    served: ApiUnderTest, ops: Keyholder
) -> None:
    ids = _queued(served, ops, "noop", 2)

    result = switchyard(ops, "queue", "purge", "--tool", "noop", "--dry-run", "--reason", "x")

    assert result.exit_code == 0, result.output
    assert "│ thread  │ noop │ 2     │" in result.output
    assert "2 QUEUED task(s) would be cancelled (dry run: nothing changed)" in result.output
    assert "0 task(s) of this selection running now: not touched" in result.output
    assert _statuses(served, ids) == {TaskStatus.QUEUED}


def test_without_yes_it_asks_first_and_a_no_changes_nothing(
    served: ApiUnderTest, ops: Keyholder
) -> None:
    ids = _queued(served, ops, "noop", 2)

    refused = switchyard(
        ops, "queue", "purge", "--backend", "thread", "--reason", "x", answer="n\n"
    )

    assert refused.exit_code == 1
    assert "Cancel these 2 QUEUED task(s)? [y/N]: n" in refused.output
    assert _statuses(served, ids) == {TaskStatus.QUEUED}

    agreed = switchyard(ops, "queue", "purge", "--backend", "thread", "--reason", "x", answer="y\n")

    assert agreed.exit_code == 0, agreed.output
    assert "2 QUEUED task(s) cancelled" in agreed.output
    assert _statuses(served, ids) == {TaskStatus.CANCELLED}
    row = served.runtime.store.get(ids[0])
    assert row is not None
    assert row.message == "purged by ops: x"


def test_yes_purges_without_asking_and_an_empty_selection_asks_nothing(
    served: ApiUnderTest, ops: Keyholder
) -> None:
    ids = _queued(served, ops, "noop", 1)

    done = switchyard(ops, "queue", "purge", "--all", "--yes", "--reason", "x")

    assert done.exit_code == 0, done.output
    assert "[y/N]" not in done.output
    assert "1 QUEUED task(s) cancelled" in done.output
    assert _statuses(served, ids) == {TaskStatus.CANCELLED}

    again = switchyard(ops, "queue", "purge", "--tool", "noop", "--reason", "x")

    assert again.exit_code == 0, again.output
    assert "nothing QUEUED matches: nothing to purge" in again.output
    assert "[y/N]" not in again.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--tool", "nope"), "error: 422: unknown tool 'nope'; known tools:"),
        (("--backend", "rabbit"), "error: 422: backend: 'rabbit' is not a backend; known:"),
        ((), "error: 422: tool_id: name a tool, a backend or a queue"),
    ],
)
def test_a_bad_filter_is_one_line_and_exit_2(
    served: ApiUnderTest, ops: Keyholder, args: tuple[str, ...], says: str
) -> None:
    result = switchyard(ops, "queue", "purge", *args, "--reason", "x")

    assert result.exit_code == 2
    assert says in result.output
    assert "Traceback" not in result.output


def test_stats_prints_the_tables(served: ApiUnderTest, ops: Keyholder) -> None:
    _queued(served, ops, "noop", 3)

    result = switchyard(ops, "queue", "stats")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    queued = next(line for line in lines if line.startswith("│ QUEUED"))
    assert queued.split("│")[1:-1] == [" QUEUED     ", " 3      ", " 3     "]
    assert "celery broker: not_in_this_process" in result.output
    assert "this process does not publish to Celery (USE_CELERY=false)" in result.output
    assert "dispatch paused: none" in result.output
    served.client.post(
        "/queue/pause", json={"reason": "incident"}, headers=ops.headers
    ).raise_for_status()

    paused = switchyard(ops, "queue", "stats")

    assert "dispatch paused: every tool" in paused.output
