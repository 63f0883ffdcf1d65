"""`switchyard submit --from-file`: every line checked before anything is sent, then batches of
the server's size, the ids in line order, and a refusal that says which lines went."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from api.cli import tasks as tasks_cli
from api.cli.app import app
from backends.testing import RecordingBackend
from execution.store import TaskFilter
from tests.api.conftest import ApiUnderTest, BuildApi
from tests.api.conftest import build_api as build_api  # the fixture, for these tests too
from tests.cli.test_cancel_retry import printed

GOOD_LINES: list[dict[str, Any]] = [
    {"tool_id": "noop"},
    {"tool_id": "sleep", "payload": {"seconds": 0}, "priority": 3},
    {"tool_id": "noop", "payload": {}},
    {"tool_id": "fail", "payload": {"message": "x"}, "priority": 9},
    {"tool_id": "noop", "priority": 0},
]


def _served(api: ApiUnderTest, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Route the command's client to `api` in-process; the batch requests it sends."""
    api.client.headers["Authorization"] = f"Bearer {api.issue('alice').token}"
    sent: list[str] = []

    def record(request: httpx.Request) -> None:
        if request.url.path == "/tasks/batch":
            sent.append(request.content.decode())

    api.client.event_hooks["request"] = [record]
    monkeypatch.setattr(tasks_cli, "api_client", lambda url, key: nullcontext(api.client))
    return sent


def _file(tmp_path: Path, lines: list[Any] | str) -> str:
    path = tmp_path / "items.jsonl"
    text = lines if isinstance(lines, str) else "\n".join(json.dumps(line) for line in lines)
    path.write_text(text + "\n")
    return str(path)


def _submit(*args: str, batch_max_items: int = 500, stdin: str | None = None) -> Result:
    env = {"COLUMNS": "80", "BATCH_MAX_ITEMS": str(batch_max_items)}
    return CliRunner().invoke(app, ["submit", *args, "--api-key", "k"], env=env, input=stdin)


def _tool_ids(api: ApiUnderTest, task_ids: list[str]) -> list[str]:
    rows = {r.task_id: r for r in api.runtime.store.find(TaskFilter(), limit=500, offset=0)}
    return [rows[task_id].tool_id for task_id in task_ids]


def _created(api: ApiUnderTest) -> int:
    return len(api.runtime.store.find(TaskFilter(), limit=500, offset=0))


def test_every_line_becomes_a_task_and_the_ids_print_in_line_order(
    build_api: BuildApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    api = build_api()
    sent = _served(api, monkeypatch)
    source = _file(tmp_path, "\n".join(json.dumps(line) for line in GOOD_LINES[:2]) + "\n\n")
    with open(source, "a") as more:
        more.write("\n".join(json.dumps(line) for line in GOOD_LINES[2:]))

    result = _submit("--from-file", source, batch_max_items=2)

    assert result.exit_code == 0, result.output
    task_ids = printed(result.stdout)
    assert _tool_ids(api, task_ids) == [line["tool_id"] for line in GOOD_LINES]
    assert len(sent) == 3  # batches of BATCH_MAX_ITEMS
    rows = {r.task_id: r for r in api.runtime.store.find(TaskFilter(), limit=10, offset=0)}
    assert [rows[t].priority for t in task_ids] == [0, 3, 0, 9, 0]


def test_stdin_is_read_with_a_dash(
    build_api: BuildApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    api = build_api()
    _served(api, monkeypatch)

    result = _submit("--from-file", "-", stdin='{"tool_id": "noop"}\n{"tool_id": "noop"}\n')

    assert result.exit_code == 0, result.output
    assert _tool_ids(api, printed(result.stdout)) == ["noop", "noop"]


def test_a_server_with_a_smaller_limit_gets_batches_of_its_size(
    build_api: BuildApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    api = build_api(batch_max_items=2)
    sent = _served(api, monkeypatch)

    result = _submit("--from-file", _file(tmp_path, GOOD_LINES), batch_max_items=500)

    assert result.exit_code == 0, result.output
    assert _tool_ids(api, printed(result.stdout)) == [line["tool_id"] for line in GOOD_LINES]
    assert [len(json.loads(body)["items"]) for body in sent] == [5, 2, 2, 1]


def test_bad_lines_are_all_named_and_nothing_is_sent(
    build_api: BuildApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    api = build_api()
    sent = _served(api, monkeypatch)
    lines = '{"tool_id": "noop"}\n{"tool_id": \n[1]\n{"tool_id": "noop", "priority": 10}\n'
    lines += '{"tool": "noop"}\n{"tool_id": "noop", "payload": []}\n'

    result = _submit("--from-file", _file(tmp_path, lines))

    assert result.exit_code == 2
    (error,) = printed(result.stderr)
    assert error.startswith(f"error: --from-file {tmp_path / 'items.jsonl'}: nothing sent; ")
    assert "line 2: not valid JSON (Expecting value at column 13)" in error
    assert "line 3: not a JSON object" in error
    assert "line 4: priority must be an integer from 0 to 9" in error
    assert "line 5: unknown field 'tool' (allowed: tool_id, payload, priority)" in error
    assert "line 6: payload must be a JSON object" in error
    assert "line 1" not in error
    assert sent == []
    assert _created(api) == 0


def test_a_tool_the_api_does_not_run_is_named_before_anything_is_sent(
    build_api: BuildApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    api = build_api()
    sent = _served(api, monkeypatch)

    result = _submit("--from-file", _file(tmp_path, [*GOOD_LINES, {"tool_id": "profile_csv"}]))

    assert result.exit_code == 2
    assert (
        "line 6: unknown tool 'profile_csv'; known tools: fail, find-duplicates, noop"
        in result.stderr
    )
    assert sent == []


def test_a_batch_the_server_refuses_names_its_line_and_what_was_sent_before_it(
    build_api: BuildApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    api = build_api()
    _served(api, monkeypatch)
    lines = [*GOOD_LINES[:3], {"tool_id": "sleep", "payload": {"seconds": "soon"}}]

    result = _submit("--from-file", _file(tmp_path, lines), batch_max_items=2)

    assert result.exit_code == 2
    assert len(printed(result.stdout)) == 2  # the first batch's ids
    (error,) = printed(result.stderr)
    assert error.startswith("error: line 4: payload: payload for 'sleep' is invalid: seconds")
    assert error.endswith(
        "the tasks of lines 1-2 were submitted (their ids are above), from line 3 on nothing was"
    )
    assert _created(api) == 2


def test_tasks_their_backend_refused_after_the_commit_name_their_lines_and_exit_1(
    build_api: BuildApi, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    api = build_api(backend=RecordingBackend(name="thread", unavailable="pool stopped"))
    _served(api, monkeypatch)

    result = _submit("--from-file", _file(tmp_path, GOOD_LINES[:2]))

    assert result.exit_code == 1
    assert len(printed(result.stdout)) == 2
    assert "2 of 2 tasks were refused by their backend" in result.stderr
    assert "submit lines 1, 2 again" in result.stderr


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["noop", "--from-file", "x"], "--from-file takes no tool id"),
        (["--from-file", "x", "--priority", "3"], "--from-file takes no tool id, --payload"),
        (["--from-file", "x", "--wait"], "--wait follows one task"),
        ([], "give a tool id"),
        (["--from-file", "/no/such/file"], "--from-file /no/such/file: cannot read it"),
    ],
)
def test_misused_options_get_one_line(args: list[str], reason: str) -> None:
    result = _submit(*args)

    assert result.exit_code == 2
    (error,) = printed(result.stderr)
    assert reason in error
