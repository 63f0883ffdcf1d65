"""Runs every command of rollout.md, in order, against a real API, worker and Redis.

A ```sh block holding only a `switchyard serve` line (with its environment) restarts the API
as written; one holding `switchyard worker` starts a worker. Every other block runs as one
`bash -euo pipefail` script and must exit 0. The runbook's URL is pointed at this test's port.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from api.runtime import Runtime
from execution.settings import Settings
from execution.status import TaskStatus
from execution.store import TaskFilter
from tests.helpers import wait_until
from tests.integration.servers import RedisServer, free_port
from tests.integration.workers import REPO_ROOT, stop_process_group

pytestmark = pytest.mark.integration

RUNBOOK = REPO_ROOT / "rollout.md"
DOCUMENTED_URL = "http://127.0.0.1:8000"
SH_BLOCK = re.compile(r"```sh\n(.*?)```", re.S)


def runbook_blocks() -> list[str]:
    """The runbook's shell blocks, in order."""
    return [block.strip() for block in SH_BLOCK.findall(RUNBOOK.read_text())]


@dataclass
class Operator:
    """An operator's shell: one working directory, one environment, the processes started."""

    workdir: Path
    env: dict[str, str]
    url: str
    api: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, line: str, log_name: str) -> subprocess.Popen[bytes]:
        """Start a long-running command as written, in its own process group."""
        log = (self.workdir / log_name).open("ab")
        return subprocess.Popen(
            ["bash", "-c", line],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def serve(self, line: str) -> None:
        """Restart the API as `line` says, and wait until it answers."""
        self.stop_api()
        self.api = self.start(line, "api.log")

        def answers() -> bool:
            try:
                return httpx.get(f"{self.url}/health", timeout=1).status_code in (200, 503)
            except httpx.HTTPError:
                return False

        wait_until(answers, what=f"the API started by {line!r}", timeout=60)

    def run(self, script: str) -> str:
        """Run a block; fail the test with its output unless it exits 0."""
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, (
            f"runbook block failed:\n{script}\n---\n{done.stdout}{done.stderr}"
        )
        return done.stdout

    def stop_api(self) -> None:
        """SIGTERM the API and wait for its graceful shutdown."""
        if self.api is not None:
            stop_process_group(self.api, timeout=60)
            self.api = None

    def stop_all(self) -> None:
        """Stop everything this shell started."""
        self.stop_api()
        for worker in self.workers:
            stop_process_group(worker, timeout=60)


@pytest.fixture
def operator(redis_server: RedisServer, tmp_path: Path) -> Iterator[Operator]:
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
    shell = Operator(workdir=tmp_path, env=env, url=url)
    yield shell
    shell.stop_all()


def test_every_command_in_the_runbook_runs(operator: Operator) -> None:
    blocks = runbook_blocks()
    assert len(blocks) >= 10
    for block in blocks:
        script = block.replace(DOCUMENTED_URL, operator.url)
        commands = [line for line in script.splitlines() if line and not line.startswith("#")]
        if len(commands) == 1 and " ".join(shlex.split(commands[0])[-2:]) == "switchyard serve":
            operator.serve(commands[0])
        elif len(commands) == 1 and "switchyard worker" in commands[0]:
            operator.workers.append(operator.start(commands[0], "worker.log"))
        else:
            operator.run(script)

    # The drill's tasks all completed, and history shows who did what and why.
    runtime = Runtime.build(Settings(_env_file=None, database_url=operator.env["DATABASE_URL"]))
    tasks = runtime.store.find(TaskFilter(tool_id="sleep"), limit=100, offset=0)
    assert len(tasks) == 20
    assert {t.status for t in tasks} == {TaskStatus.COMPLETED}
    history = runtime.rollout_control.history(limit=100, offset=0)
    assert {e.actor for e in history} - {"environment"} == {"operator"}
    assert history[0].reason == "drill over"
    runtime.engine.dispose()
