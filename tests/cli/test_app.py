"""The `switchyard` command: a bad setting stops it with one line naming the setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from api.cli import app as cli
from execution.settings import Settings

CONSOLE_SCRIPT = Path(sys.executable).with_name("switchyard")

BAD_SETTINGS = [
    ({"USE_CELERY": "maybe"}, "USE_CELERY"),
    ({"CELERY_ROLLOUT_PERCENTAGE": "150"}, "CELERY_ROLLOUT_PERCENTAGE"),
    (
        {"CELERY_TASK_SOFT_TIME_LIMIT": "1700", "CELERY_TASK_TIME_LIMIT": "1600"},
        "CELERY_TASK_SOFT_TIME_LIMIT",
    ),
]


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _switchyard(
    args: list[str], *, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args],
        env={**clean, "COLUMNS": "80", **env},  # narrow, as in CI logs: nothing may wrap
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def narrow_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's error console at 80 columns, whatever terminal runs the tests."""
    monkeypatch.setattr(cli, "err", Console(stderr=True, width=80))


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


def test_the_console_script_reports_a_bad_setting_without_a_traceback(tmp_path: Path) -> None:
    result = _switchyard(["serve"], env={"CELERY_ROLLOUT_PERCENTAGE": "150"}, cwd=tmp_path)

    assert result.returncode == 2
    (line,) = _lines(result.stderr)
    assert "CELERY_ROLLOUT_PERCENTAGE" in line
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "switchyard.db").exists()


def test_serve_warns_loudly_when_celery_is_on_at_zero_percent(tmp_path: Path) -> None:
    # A tools module that cannot load stops serve right after the warning, before it binds.
    result = _switchyard(
        ["serve"],
        env={
            "USE_CELERY": "true",
            "CELERY_ROLLOUT_PERCENTAGE": "0",
            "SWITCHYARD_TOOLS": "no_such_tools_module",
        },
        cwd=tmp_path,
    )

    warning, error = _lines(result.stderr)
    assert warning.startswith("WARNING: USE_CELERY=true but CELERY_ROLLOUT_PERCENTAGE=0")
    assert "NO task will go to Celery" in warning
    assert error.startswith("error: SWITCHYARD_TOOLS")
    assert "no_such_tools_module" in error
    assert result.returncode == 2


def test_tools_lists_the_registry(clean_env: None) -> None:
    result = CliRunner().invoke(cli.app, ["tools"], env={"SWITCHYARD_TOOLS": "tests.tools"})

    assert result.exit_code == 0
    assert "chatty" in result.stdout
    assert "profile-csv" not in result.stdout
