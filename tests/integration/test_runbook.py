"""Runs every command of rollout.md, in order, against a real API, worker and Redis.

A ```sh block holding only a `switchyard serve` line (with its environment) restarts the API
as written; one holding `switchyard worker` starts a worker. Every other block runs as one
`bash -euo pipefail` script and must exit 0. The runbook's URL is pointed at this test's port.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.runtime import Runtime
from api.settings import Settings
from execution.status import TaskStatus
from execution.store import TaskFilter
from tests.integration.servers import RedisServer, free_port
from tests.integration.shell_blocks import Shell, commands, shell_blocks
from tests.integration.workers import REPO_ROOT

pytestmark = pytest.mark.integration

RUNBOOK = REPO_ROOT / "rollout.md"
DOCUMENTED_URL = "http://127.0.0.1:8000"


@pytest.fixture
def operator(redis_server: RedisServer, tmp_path: Path) -> Iterator[Shell]:
    """A shell with switchyard on PATH, its own database, and Redis."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO_ROOT),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'switchyard.db'}",
        "REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/5",
        "SWITCHYARD_URL": url,
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "THREAD_SWEEP_SECONDS": "1",
    }
    env.pop("SWITCHYARD_API_KEY", None)
    shell = Shell(workdir=tmp_path, env=env, url=url)
    yield shell
    shell.stop_all()


def test_every_command_in_the_runbook_runs(operator: Shell) -> None:
    blocks = shell_blocks(RUNBOOK)
    assert len(blocks) >= 10
    for block in blocks:
        script = block.replace(DOCUMENTED_URL, operator.url)
        lines = commands(script)
        if len(lines) == 1 and " ".join(shlex.split(lines[0])[-2:]) == "switchyard serve":
            operator.serve(lines[0])
        elif len(lines) == 1 and "switchyard worker" in lines[0]:
            operator.start(lines[0], "worker.log")
        else:
            operator.run(script)

    # The drill's probes all completed, routed to both backends, and it put the rollout back
    # where it found it; history shows who did what and why.
    runtime = Runtime.build(Settings(_env_file=None, database_url=operator.env["DATABASE_URL"]))
    probes = runtime.store.find(TaskFilter(tool_id="probe"), limit=500, offset=0)
    assert len(probes) > 20
    assert {t.status for t in probes} == {TaskStatus.COMPLETED}
    # Routed to both (a Celery task id is given at routing); where a Celery one ran depends on
    # whether a worker took it before the rollback reclaimed it for threads.
    assert {t.celery_task_id is not None for t in probes} == {True, False}
    history = runtime.rollout_control.history(limit=100, offset=0)
    assert {e.actor for e in history} - {"environment"} == {"operator"}
    drill = [e.reason.split(": ", 1)[1] for e in history[3::-1]]
    assert drill == ["raise to 50 %", "roll back under load", "restore", "put back as found"]
    # Routing as the drill found it (the change before it may also show the paused tools).
    assert history[0].after.items() <= history[4].after.items()
    runtime.engine.dispose()
