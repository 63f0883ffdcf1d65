"""`switchyard serve`, `db upgrade` and `tools`: a bad setting is one line; Alembic stays quiet."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import uvicorn
from rich.console import Console
from typer.testing import CliRunner

from api.cli import app as cli
from api.cli import console
from api.settings import Settings
from dispatch.rollout.state import RolloutAction
from dispatch.rollout.store import RolloutStore
from execution.database import make_engine
from execution.tools.registry import Tool
from tests.cli.conftest import RunSwitchyard

BAD_SETTINGS = [
    ({"USE_CELERY": "maybe"}, "USE_CELERY"),
    ({"CELERY_ROLLOUT_PERCENTAGE": "150"}, "CELERY_ROLLOUT_PERCENTAGE"),
    (
        {"CELERY_TASK_SOFT_TIME_LIMIT": "1700", "CELERY_TASK_TIME_LIMIT": "1600"},
        "CELERY_TASK_SOFT_TIME_LIMIT",
    ),
]
ALEMBIC_CHATTER = ("Context impl", "Will assume", "alembic.runtime.migration")


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _line_with(text: str, needle: str) -> str:
    (line,) = [line for line in text.splitlines() if needle in line]
    return line


@pytest.fixture
def narrow_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's error console at 80 columns, whatever terminal runs the tests."""
    narrow = Console(stderr=True, width=80)
    monkeypatch.setattr(cli, "err", narrow)
    monkeypatch.setattr(console, "err", narrow)


@pytest.mark.parametrize(("env", "named"), BAD_SETTINGS)
def test_serve_with_a_bad_setting_exits_2_with_one_line_naming_it(
    clean_env: None, narrow_stderr: None, env: dict[str, str], named: str
) -> None:
    result = CliRunner().invoke(cli.app, ["serve"], env=env)

    assert result.exit_code == 2
    (line,) = _lines(result.stderr)
    assert line.startswith("error: invalid setting")
    assert named in line
    assert "Traceback" not in result.output


def test_the_console_script_reports_a_bad_setting_without_a_traceback(
    switchyard: RunSwitchyard, tmp_path: Path
) -> None:
    result = switchyard("serve", CELERY_ROLLOUT_PERCENTAGE="150")

    assert result.returncode == 2
    (line,) = _lines(result.stderr)
    assert "CELERY_ROLLOUT_PERCENTAGE" in line
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "switchyard.db").exists()


def serve_until_binding(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    """`switchyard serve` up to the moment it would bind; its stderr."""
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)
    result = CliRunner().invoke(cli.app, ["serve"], env=env)
    assert result.exit_code == 0, result.output
    return result.stderr


def test_serve_warns_loudly_when_celery_is_on_but_the_rollout_in_force_sends_nothing(
    clean_env: None, restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr = serve_until_binding(monkeypatch, USE_CELERY="true", CELERY_ROLLOUT_PERCENTAGE="0")

    warning = _line_with(stderr, "WARNING")
    assert warning.startswith("WARNING: USE_CELERY=true but the rollout in force (version 1)")
    assert "sends NO task to Celery" in warning
    assert "rollout=0% (version 1, seed by environment; first start" in stderr


def test_the_banner_shows_the_stored_rollout_not_the_environment(
    clean_env: None, restore_logging: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The issue's case: a database holding a runtime change, a restart with the same env."""
    serve_until_binding(monkeypatch, CELERY_ROLLOUT_PERCENTAGE="0")
    store = RolloutStore(make_engine(f"sqlite:///{tmp_path / 'switchyard.db'}"))
    store.change(
        lambda s: (replace(s, percentage=40.0), None),
        action=RolloutAction.SET,
        actor="carol",
        reason="step",
        expected_version=None,
    )

    again = serve_until_binding(monkeypatch, USE_CELERY="true", CELERY_ROLLOUT_PERCENTAGE="0")
    assert "WARNING" not in again
    assert "rollout=40% (version 2, set by carol; CELERY_ROLLOUT_PERCENTAGE=0% already" in again

    changed = serve_until_binding(monkeypatch, USE_CELERY="true", CELERY_ROLLOUT_PERCENTAGE="25")
    assert "rollout=25% (version 3, environment by environment; CELERY_ROLLOUT_PERCENTAGE=25%" in (
        changed
    )

    unset = serve_until_binding(monkeypatch, USE_CELERY="true")  # the default, not a value
    assert "rollout=25% (version 3, environment by environment; CELERY_ROLLOUT_PERCENTAGE not" in (
        unset
    )


def test_serve_logs_its_own_lines_but_not_alembics(
    clean_env: None, restore_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: None)  # everything up to binding

    result = CliRunner().invoke(cli.app, ["serve"])

    assert result.exit_code == 0, result.output
    assert "db.upgraded" in result.stderr
    assert "No API key existed, so an operator key was created" in result.stderr
    assert (
        "rollout=0% (version 1, seed by environment; first start: the default "
        "(CELERY_ROLLOUT_PERCENTAGE not set))" in result.stderr
    )
    for chatter in ALEMBIC_CHATTER:
        assert chatter not in result.stderr


def test_db_upgrade_says_where_the_database_is_without_alembics_chatter(
    switchyard: RunSwitchyard,
) -> None:
    result = switchyard("db", "upgrade")

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("database at head: sqlite:///")
    assert "db.upgraded" in result.stderr
    for chatter in ALEMBIC_CHATTER:
        assert chatter not in result.stderr


def test_alembics_lines_come_back_at_debug(switchyard: RunSwitchyard) -> None:
    result = switchyard("db", "upgrade", LOG_LEVEL="DEBUG")

    assert result.returncode == 0, result.stderr
    assert "Context impl" in result.stderr


def test_tools_lists_the_registry(clean_env: None) -> None:
    result = CliRunner().invoke(cli.app, ["tools"], env={"SWITCHYARD_TOOLS": "tests.tools"})

    assert result.exit_code == 0
    assert "chatty" in result.stdout
    assert "profile-csv" not in result.stdout


def test_tools_shows_the_default_limits_where_a_tool_sets_none(clean_env: None) -> None:
    modules = "execution.tools.builtin,tests.integration.limited_tools"

    result = CliRunner().invoke(cli.app, ["tools"], env={"SWITCHYARD_TOOLS": modules})

    assert result.exit_code == 0, result.output
    assert "1500 / 1800 (default)" in _line_with(result.stdout, "noop")
    own = _line_with(result.stdout, "over-time")
    assert "1 / 30" in own
    assert "(default" not in own


def test_tools_default_limits_are_the_settings(clean_env: None) -> None:
    env = {"CELERY_TASK_SOFT_TIME_LIMIT": "100", "CELERY_TASK_TIME_LIMIT": "200"}

    result = CliRunner().invoke(cli.app, ["tools"], env=env)

    assert result.exit_code == 0, result.output
    assert "100 / 200 (default)" in _line_with(result.stdout, "noop")


def test_piped_tools_keep_each_description_on_its_tools_line(switchyard: RunSwitchyard) -> None:
    result = switchyard("tools", columns=80)

    assert result.returncode == 0, result.stderr
    row = _line_with(result.stdout, "noop")
    assert "Does nothing and returns at once: measures the machinery itself." in row


@pytest.mark.parametrize(
    ("soft", "hard", "shown"),
    [
        (None, None, "1500 / 1800 (default)"),
        (60, None, "60 / 1800 (default hard)"),
        (None, 1200, "1500 / 1200 (default soft)"),
        (60, 120, "60 / 120"),
    ],
)
def test_time_limits_name_the_ones_that_come_from_the_settings(
    soft: int | None, hard: int | None, shown: str
) -> None:
    spec = Tool(tool_id="t", handler=lambda ctx: None, soft_time_limit=soft, time_limit=hard)
    settings = Settings(
        _env_file=None, celery_task_soft_time_limit=1500, celery_task_time_limit=1800
    )

    assert cli.time_limits(spec, settings) == shown
