"""Runs the ```python blocks of README.md as written, each saved under the file name its first
line gives, in an empty directory with none of Switchyard's settings in the environment (the
thread backend and a SQLite file there, as for a newcomer); only the API address of the HTTP
client's block is moved to a free port."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from api.settings import Settings
from execution.database import make_engine
from execution.records import TaskRecord
from execution.status import TaskStatus
from execution.store import TaskStore
from tests.helpers import wait_until
from tests.integration.servers import free_port
from tests.integration.shell_blocks import python_blocks
from tests.integration.workers import REPO_ROOT, stop_process_group

pytestmark = pytest.mark.integration

README = REPO_ROOT / "README.md"
DOCUMENTED_API = "http://127.0.0.1:8000"

FAST_APP_DRIVER = """
from fastapi.testclient import TestClient

import app

with TestClient(app.app) as client:
    task_id = client.post("/reports/ana").json()["task_id"]
    print(task_id, client.get("/switchyard/health").status_code)
"""
"""Serves app.py in-process, as uvicorn would, and orders a report through its own route."""


@pytest.fixture(scope="module")
def blocks() -> dict[str, str]:
    """The README's python blocks by the file name their first line gives."""
    found: dict[str, str] = {}
    for block in python_blocks(README):
        first = block.splitlines()[0]
        assert first.startswith("# "), f"a python block starts with '# <file name>': {first}"
        found[first.removeprefix("# ").split(":")[0]] = block
    return found


@pytest.fixture
def newcomer() -> dict[str, str]:
    """An environment without Switchyard's settings, importing this checkout."""
    unset = {name.upper() for name in Settings.model_fields} | {"VIRTUAL_ENV"}
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in unset and not name.startswith("SWITCHYARD_")
    }
    return env | {"PYTHONPATH": str(REPO_ROOT)}


def run(script: str, *, cwd: Path, env: dict[str, str]) -> str:
    """Run a python file of `cwd`; its stdout, once it exited 0."""
    done = subprocess.run(
        [sys.executable, script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def test_the_readme_has_the_python_blocks_this_test_runs(blocks: dict[str, str]) -> None:
    assert list(blocks) == [
        "reports.py, before",
        "reports.py, with Switchyard",
        "app.py",
        "client.py",
    ]


def test_the_migration_example_runs_before_and_after(
    blocks: dict[str, str], newcomer: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "before.py").write_text(blocks["reports.py, before"])
    (tmp_path / "reports.py").write_text(blocks["reports.py, with Switchyard"])

    run("before.py", cwd=tmp_path, env=newcomer)
    printed = run("reports.py", cwd=tmp_path, env=newcomer).split()

    task_id, result = printed[0], " ".join(printed[1:])
    assert result == "{'sent_to': 'ana'}"
    store = TaskStore(make_engine(f"sqlite:///{tmp_path / 'switchyard.db'}"))
    record = store.get(str(uuid.UUID(task_id)))
    assert record is not None
    assert (record.tool_id, record.status, record.backend) == (
        "send-report",
        TaskStatus.COMPLETED,
        "thread",
    )
    assert "report built" in [event.message for event in store.events(task_id)]
    store.engine.dispose()


def test_the_fastapi_example_enqueues_from_its_route(
    blocks: dict[str, str], newcomer: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "reports.py").write_text(blocks["reports.py, with Switchyard"])
    (tmp_path / "app.py").write_text(blocks["app.py"])
    (tmp_path / "drive.py").write_text(FAST_APP_DRIVER)

    task_id, health = run("drive.py", cwd=tmp_path, env=newcomer).split()

    assert health == "200"  # the mounted API, started by the host's lifespan
    store = TaskStore(make_engine(f"sqlite:///{tmp_path / 'switchyard.db'}"))
    record = wait_until(lambda: _ended(store, task_id), what="the report to end")
    assert (record.status, record.result) == (TaskStatus.COMPLETED, {"sent_to": "ana"})
    store.engine.dispose()


def test_the_http_client_example_runs_against_a_served_api(
    blocks: dict[str, str], newcomer: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    with (tmp_path / "api.log").open("wb") as log:
        api = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=newcomer,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: _answers(port, api), what="switchyard serve", timeout=60)
        key = (tmp_path / ".switchyard" / "operator.key").read_text().strip()
        script = blocks["client.py"].replace(DOCUMENTED_API, f"http://127.0.0.1:{port}")
        assert script != blocks["client.py"]
        (tmp_path / "client.py").write_text(script)

        printed = run("client.py", cwd=tmp_path, env=newcomer | {"SWITCHYARD_API_KEY": key})
    finally:
        stop_process_group(api, timeout=30)

    lines = printed.splitlines()
    assert lines[:2] == ["COMPLETED 1", "3 0"]
    assert lines[2].startswith(
        "422 unknown tool 'profile_csv'; known tools: fail, find-duplicates, noop"
    )


def _answers(port: int, api: subprocess.Popen[bytes]) -> bool:
    assert api.poll() is None, "switchyard serve exited"
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=1).is_success
    except httpx.HTTPError:
        return False


def _ended(store: TaskStore, task_id: str) -> TaskRecord | None:
    record = store.get(task_id)
    return record if record is not None and record.status.is_terminal else None
