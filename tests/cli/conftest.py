"""Fixtures for the CLI's tests: the installed `switchyard` command, run as a new user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from types import ModuleType

import pytest
from fastapi.testclient import TestClient

from api.settings import Settings

CONSOLE_SCRIPT = Path(sys.executable).with_name("switchyard")
# Rich and Typer read these to decide a terminal's width or that there is one at all.
TERMINAL_HINTS = {"COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE", "TERMINAL_WIDTH"}

RunSwitchyard = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def switchyard(tmp_path: Path) -> RunSwitchyard:
    """Run the console script in an empty directory, stdout and stderr piped, 80 columns wide.

    Keyword arguments are environment variables; `columns` sets COLUMNS. The defaults put the
    database and the operator key file in that directory, as they would for a newcomer.
    """
    clean = {
        k: v
        for k, v in os.environ.items()
        if k.lower() not in Settings.model_fields and k not in TERMINAL_HINTS
    }

    def run(*args: str, columns: int = 80, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CONSOLE_SCRIPT), *args],
            env={**clean, "COLUMNS": str(columns), **env},
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run


def serve_in_process(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, *commands: ModuleType
) -> None:
    """Make the commands of each CLI module talk to the app behind `client`, in-process, with
    the --api-key they are given (every command in these tests is given one)."""

    def client_for(url: str, api_key: str | None) -> nullcontext[TestClient]:
        assert api_key is not None, "every command here is given --api-key"
        client.headers["Authorization"] = f"Bearer {api_key}"
        return nullcontext(client)

    for module in commands:
        monkeypatch.setattr(module, "api_client", client_for)
