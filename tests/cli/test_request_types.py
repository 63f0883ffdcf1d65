"""The CLI's request bodies fit the API's strict request models: no command relies on coercion.

Each command runs in-process against the real app, its HTTP client swapped for the app's
test client, so a body with a wrong JSON type (a percentage as a string, a priority as a
float) fails here as a 422.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.app import create_app
from api.cli import rollout as rollout_cli
from api.cli import tasks as tasks_cli
from api.cli.app import app
from api.keys import Role
from api.runtime import Runtime
from backends.testing import RecordingBackend
from execution.tools.registry import load_registry
from tests.api.conftest import api_settings


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    """The app with an operator key; CLI commands talk to it in-process."""
    runtime = Runtime.build(
        api_settings(tmp_path),
        backends={"thread": RecordingBackend(name="thread")},
        registry=load_registry(["execution.tools.builtin"]),
    )
    runtime.prepare_database()
    token = runtime.keys.create(user_id="ops", role=Role.OPERATOR).token
    with TestClient(create_app(runtime), headers={"Authorization": f"Bearer {token}"}) as client:
        # The commands close their client when done; this one lives as long as the test.
        for module in (rollout_cli, tasks_cli):
            monkeypatch.setattr(module, "api_client", lambda url, api_key: nullcontext(client))
        yield runtime


def run(*args: str) -> str:
    """Run a command; its output, after checking it exited 0."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_rollout_set_rollback_and_restore_send_bodies_the_api_takes(served: Runtime) -> None:
    run(
        "rollout",
        "set",
        "25",
        "--tool",
        "noop=10",
        "--stickiness",
        "user_id",
        "--reason",
        "first step",
    )
    run("rollout", "rollback", "--reason", "bad deploy")
    run("rollout", "restore", "--reason", "fixed")

    policy = served.rollout.current()
    assert (policy.percentage, dict(policy.tool_overrides), policy.stickiness) == (
        25,
        {"noop": 10},
        "user_id",
    )


def test_submit_sends_a_priority_and_payload_the_api_takes(served: Runtime) -> None:
    output = run("submit", "noop", "--priority", "5", "--payload", '{"n": 1, "tags": ["a"]}')

    match = re.search(r"^task (\S+) QUEUED", output, re.MULTILINE)
    assert match is not None, output
    task_id = match[1]
    record = served.store.get(task_id)
    assert record is not None
    assert (record.priority, record.payload) == (5, {"n": 1, "tags": ["a"]})
