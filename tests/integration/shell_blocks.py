"""Running a document's ```sh blocks as a reader would: one shell, long-running commands apart
(and finding its ```python blocks, which test_readme_python.py runs).

Shared by the tests that keep rollout.md and README.md honest.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.helpers import wait_until
from tests.integration.workers import stop_process_group

SH_BLOCK = re.compile(r"```sh\n(.*?)```", re.S)
PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
FENCED_BLOCK = re.compile(r"^```(\S*)\n.*?^```", re.S | re.M)


def shell_blocks(document: Path) -> list[str]:
    """The document's ```sh blocks, in order."""
    return [block.strip() for block in SH_BLOCK.findall(document.read_text())]


def python_blocks(document: Path) -> list[str]:
    """The document's ```python blocks, in order."""
    return [block.strip() + "\n" for block in PYTHON_BLOCK.findall(document.read_text())]


def fence_languages(document: Path) -> set[str]:
    """The languages of the document's fenced blocks (each opening fence's word)."""
    return set(FENCED_BLOCK.findall(document.read_text()))


def commands(block: str) -> list[str]:
    """The block's lines that are not blank and not comments."""
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


@dataclass
class Shell:
    """A reader's shell: one working directory, one environment, the processes it started."""

    workdir: Path
    env: dict[str, str]
    url: str
    api: subprocess.Popen[bytes] | None = None
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, line: str, log_name: str) -> subprocess.Popen[bytes]:
        """Start a long-running command as written; stop_all stops it."""
        process = self._spawn(line, log_name)
        self.processes.append(process)
        return process

    def serve(self, line: str) -> None:
        """Restart the API as `line` says, and wait until it answers."""
        self.stop_api()
        api = self.api = self._spawn(line, "api.log")

        def answers() -> bool:
            assert api.poll() is None, f"{line!r} exited:\n{self.log('api.log')}"
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
        assert done.returncode == 0, f"block failed:\n{script}\n---\n{done.stdout}{done.stderr}"
        return done.stdout

    def log(self, log_name: str) -> str:
        """What the processes logging to `log_name` printed so far."""
        return (self.workdir / log_name).read_text(errors="replace")

    def _spawn(self, line: str, log_name: str) -> subprocess.Popen[bytes]:
        # A process group of its own, so stopping it stops whatever `bash -c` started.
        with (self.workdir / log_name).open("ab") as log:
            return subprocess.Popen(
                ["bash", "-c", line],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop_api(self) -> None:
        """SIGTERM the API and wait for its graceful shutdown."""
        if self.api is not None:
            stop_process_group(self.api, timeout=60)
            self.api = None

    def stop_all(self) -> None:
        """Stop everything this shell started, the API first."""
        self.stop_api()
        for process in reversed(self.processes):
            stop_process_group(process, timeout=60)
        self.processes.clear()
