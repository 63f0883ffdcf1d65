"""`--help` as documented: NAMES not <types>, nothing swallowed, each command says what it does."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from api.cli.app import app

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TYPE_LABEL = re.compile(r"<(str|int|float|bool|path)[^>]*>")
BRACED_ARGUMENT = re.compile(r"\{[a-z_]+\}")
SPACE_BEFORE_STOP = re.compile(r"\w [.,;]")


def _commands(group: typer.core.TyperGroup, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, typer.core.TyperGroup):
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


COMMANDS = _commands(typer.main.get_group(app))


def _help(*command: str, columns: int = 200) -> str:
    result = CliRunner().invoke(
        app, [*command, "--help"], env={"COLUMNS": str(columns)}, prog_name="switchyard"
    )
    assert result.exit_code == 0, result.output
    return ANSI.sub("", result.stdout)


def test_every_command_is_checked() -> None:
    assert {("serve",), ("tasks",), ("keys", "list"), ("rollout", "set")} <= set(COMMANDS)


@pytest.mark.parametrize("columns", [80, 200])
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_shows_no_type_labels_braced_arguments_or_cut_off_words(
    command: tuple[str, ...], columns: int
) -> None:
    shown = _help(*command, columns=columns)

    assert not TYPE_LABEL.search(shown)
    assert not BRACED_ARGUMENT.search(shown)
    assert "…" not in shown  # "--require-comple…" when every flag had a --no- twin


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_text_has_no_stray_space_before_a_full_stop(command: tuple[str, ...]) -> None:
    # A "[default: ...]" written into help is Rich markup: it vanished and left "API key ."
    assert not SPACE_BEFORE_STOP.search(_help(*command))


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        (("submit",), "switchyard submit [OPTIONS] [TOOL_ID]"),
        (("status",), "switchyard status [OPTIONS] [TASK_ID]"),
        (("keys", "revoke"), "switchyard keys revoke [OPTIONS] KEY_ID"),
        (("rollout", "set"), "switchyard rollout set [OPTIONS] PERCENTAGE"),
        (("db", "upgrade"), "switchyard db upgrade [OPTIONS] [REVISION]"),
    ],
)
def test_usage_lines_name_arguments_in_capitals(command: tuple[str, ...], usage: str) -> None:
    assert f"Usage: {usage}" in _help(*command)


@pytest.mark.parametrize(
    ("command", "text"),
    [
        (("submit",), "A tool id from `switchyard tools`."),
        (("status",), "The task's id."),
        (("rollout", "set"), "Share of new tasks for Celery, 0-100."),
    ],
)
def test_arguments_show_their_help(command: tuple[str, ...], text: str) -> None:
    # Typer up to 0.25 loses it under click 8.5: the pin in pyproject.toml keeps them apart.
    assert text in _help(*command)


@pytest.mark.parametrize(
    ("command", "default"),
    [
        (("submit",), "[default: (the key in OPERATOR_KEY_FILE, written by the first `serve`)]"),
        (("submit",), "[default: http://127.0.0.1:8000]"),
        (("serve",), "[default: (the HOST setting)]"),
        (("serve",), "[default: (the PORT setting)]"),
        (("worker",), "[default: (every tool's queue)]"),
        (("worker",), "[default: (the CELERY_WORKER_CONCURRENCY setting)]"),
    ],
)
def test_defaults_taken_from_settings_are_named(command: tuple[str, ...], default: str) -> None:
    assert default in _help(*command)


def test_tasks_is_described_as_the_count_it_prints() -> None:
    (line,) = [line for line in _help().splitlines() if line.lstrip("│ ").startswith("tasks ")]

    assert "Count the newest tasks" in line
    assert "Count the newest tasks" in _help("tasks")
