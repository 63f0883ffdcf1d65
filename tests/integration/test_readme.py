"""Runs every ```sh block of README.md, in order, as a newcomer would from a clean clone.

The newcomer's shell works in an empty directory holding what a clone has that the README uses
(the tracked files under data/, and .venv, this test's own virtualenv), with none of
Switchyard's settings in its environment and .venv/bin off PATH, as after `make run`. Only the
addresses move: the API, Redis and the CLI are pointed at free ports.

A block holding a long-running command is taken line by line: `make run` and `switchyard serve`
(re)start the API, `redis-server` and workers are started and waited for, a line in EXCEPTIONS
is skipped for the reason it gives, and any other line runs on its own. Every other block runs
whole as one `bash -euo pipefail` script and must exit 0; what the tour says it shows is checked.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from celery import Celery

from tests.helpers import wait_until
from tests.integration.servers import free_port
from tests.integration.shell_blocks import Shell, commands, fence_languages, shell_blocks
from tests.integration.workers import REPO_ROOT

pytestmark = pytest.mark.integration

README = REPO_ROOT / "README.md"
DOCUMENTED_API = "127.0.0.1:8000"
DOCUMENTED_REDIS_PORT = "--port 6379"
MAKE_RUN_SERVES = ".venv/bin/switchyard serve"
"""What `make run` runs once .venv is built (test_make_run_serves_as_the_readme_says checks)."""

EXCEPTIONS = {
    "make test": "runs the whole suite, this test included",
    "make bench": "minutes of benchmarks; tests/test_benchmarks_smoke.py runs them small",
    ".venv/bin/pip install flower": "downloads Flower, which Switchyard does not depend on",
    ".venv/bin/celery -A api.worker flower": "needs Flower, which the line above installs",
}
"""README lines this test does not run, by how they start, and why."""

# What the tour's comments say each response holds: (which response, text shown in the README).
TOUR_FACTS = [
    (0, '"status":"COMPLETED","progress":100'),
    (0, '"result":{"rows":3,"columns":3,"ragged_rows":0'),
    (0, '"profile":[{"name":"city","type":"string"'),
    (0, '{"name":"population","type":"integer","nulls":0,"non_null":3,"min":236234,"max":522250}'),
    (0, '{"name":"founded","type":"integer","nulls":1,"non_null":2,"min":-43,"max":640}'),
    (2, '{"use_celery":false,"percentage":0.0,"effective_percentage":0.0'),
    (2, '"explanation":"USE_CELERY is false: every new task runs on the thread backend"'),
    (
        3,
        '{"status":"ok","reasons":[],"database":"ok",'
        '"backends":{"thread":{"ok":true,"state":"ok","workers":8',
    ),
    (
        4,
        '{"detail":"unknown tool \'profile_csv\'; '
        'known tools: fail, find-duplicates, noop, probe, profile-csv, sleep"',
    ),
]


def words(line: str) -> list[str]:
    """The line as the shell splits it, without its comment; none if a quote runs on past it."""
    try:
        return shlex.split(line, comments=True)
    except ValueError:
        return []


def excepted(line: str) -> str | None:
    """Why the line is not run, if it is one of the EXCEPTIONS."""
    return next((why for start, why in EXCEPTIONS.items() if line.startswith(start)), None)


def is_serve(line: str) -> bool:
    """`make run`, or `[VAR=value ...] .venv/bin/switchyard serve`."""
    said = words(line)
    return said == ["make", "run"] or said[-2:] == [".venv/bin/switchyard", "serve"]


def is_worker(line: str) -> bool:
    """`.venv/bin/switchyard worker ...` or `.venv/bin/celery -A api.worker worker ...`."""
    said = words(line)
    return said[:2] == [".venv/bin/switchyard", "worker"] or said[:4] == [
        ".venv/bin/celery",
        "-A",
        "api.worker",
        "worker",
    ]


def is_redis(line: str) -> bool:
    """`redis-server ...`."""
    return words(line)[:1] == ["redis-server"]


def long_running_or_excepted(line: str) -> bool:
    """Whether the line cannot simply run to its end here."""
    return bool(excepted(line)) or is_serve(line) or is_worker(line) or is_redis(line)


def settings_named_in_the_readme() -> set[str]:
    """Every variable of the README's settings table."""
    return set(re.findall(r"^\| `([A-Z_]+)` \|", README.read_text(), re.M))


@dataclass
class Newcomer:
    """The shell of someone following the README, and the Redis port it was pointed at."""

    shell: Shell
    redis_port: int
    workers: int = 0

    @property
    def broker_url(self) -> str:
        """The Redis the README's `redis-server` line serves."""
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def take(self, line: str) -> None:
        """Start, skip or run one line of a block that holds a long-running command."""
        if excepted(line):
            return
        if is_serve(line):
            self.shell.serve(MAKE_RUN_SERVES if words(line) == ["make", "run"] else line)
        elif is_redis(line):
            assert DOCUMENTED_REDIS_PORT in line
            self.shell.start(
                line.replace(DOCUMENTED_REDIS_PORT, f"--port {self.redis_port}"), "redis.log"
            )
            wait_until(self._redis_answers, what="the README's redis-server", timeout=30)
        elif is_worker(line):
            self.shell.start(line, "worker.log")
            self.workers += 1
            self._wait_for_workers(self.workers)
        else:
            self.shell.run(line)

    def _redis_answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.redis_port, socket_connect_timeout=0.5).ping())
        except redis.ConnectionError:
            return False

    def _wait_for_workers(self, count: int) -> None:
        probe = Celery(broker=self.broker_url, set_as_current=False)

        def all_answer() -> bool:
            exited = [process for process in self.shell.processes if process.poll() is not None]
            assert not exited, f"a worker or Redis exited:\n{self.shell.log('worker.log')}"
            return len(probe.control.ping(timeout=0.5) or []) >= count

        try:
            wait_until(all_answer, what=f"{count} workers to answer a ping", timeout=60)
        finally:
            probe.close()


@pytest.fixture
def newcomer(tmp_path: Path) -> Iterator[Newcomer]:
    """A shell in a directory with what a clone has, without Switchyard's settings or PATH."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z", "data"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, tracked.split("\0")):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / name, tmp_path / name)
    (tmp_path / ".venv").symlink_to(sys.prefix)  # what `make run` builds

    venv_bin = (Path(sys.prefix) / "bin").resolve()
    path = [p for p in os.environ["PATH"].split(os.pathsep) if Path(p).resolve() != venv_bin]
    unset = settings_named_in_the_readme() | {"VIRTUAL_ENV"}
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in unset and not name.startswith("SWITCHYARD_")
    }
    api_port, redis_port = free_port(), free_port()
    env |= {
        "PATH": os.pathsep.join(path),
        "PYTHONPATH": str(REPO_ROOT),
        "PORT": str(api_port),
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "SWITCHYARD_URL": f"http://127.0.0.1:{api_port}",
    }
    shell = Shell(workdir=tmp_path, env=env, url=f"http://127.0.0.1:{api_port}")
    yield Newcomer(shell=shell, redis_port=redis_port)
    shell.stop_all()


def responses(output: str) -> tuple[list[str], str]:
    """The JSON documents printed one after another (curl adds no newline), and what follows."""
    decoder = json.JSONDecoder()
    found: list[str] = []
    rest = output.lstrip()
    while rest.startswith(("{", "[")):
        _, end = decoder.raw_decode(rest)
        found.append(rest[:end])
        rest = rest[end:].lstrip()
    return found, rest.strip()


def check_the_tour(block: str, output: str) -> None:
    """What the tour's comments say it shows is what the API answered."""
    answers, after = responses(output)
    for index, fact in TOUR_FACTS:
        assert fact in block, f"the tour no longer shows {fact}"
        assert fact in answers[index], f"{fact} not in {answers[index]}"

    shown = " ".join(
        line.lstrip("# ") for line in block.splitlines() if line.startswith("#") and "->" in line
    )
    history = " -> ".join(
        f'{event["status"]} {event["progress"]} "{event["message"]}"'
        for event in json.loads(answers[1])
    )
    assert " ".join(shown.split()) == history

    assert "} 422" in block
    assert after == "422"


def test_every_sh_block_of_the_readme_runs(newcomer: Newcomer) -> None:
    shell = newcomer.shell
    sample_rows = len((REPO_ROOT / "data" / "sales.csv").read_text().splitlines()) - 1
    blocks = shell_blocks(README)
    assert len(blocks) >= 8
    for block in blocks:
        script = block.replace(DOCUMENTED_API, shell.url.removeprefix("http://"))
        lines = commands(script)
        if any(long_running_or_excepted(line) for line in lines):
            for line in lines:
                newcomer.take(line)
            continue
        output = shell.run(script)
        if block.startswith("AUTH="):
            check_the_tour(block, output)
        if "sales.csv" in block:
            assert f'"rows": {sample_rows}' in output  # the sample's profile
        if "keys revoke" in block:
            assert '{"items":[]' in output  # alice's key worked, and saw no one else's task
            assert output.splitlines()[-1] == "401"

    # Every task the README made ran to the end.
    operator_key = (shell.workdir / ".switchyard" / "operator.key").read_text().strip()
    listed = httpx.get(
        f"{shell.url}/tasks",
        params={"limit": 500},
        headers={"Authorization": f"Bearer {operator_key}"},
    ).json()["items"]
    # ... but the one `fail` task of "Failed tasks", which fails again when retried.
    assert {(task["tool_id"], task["status"]) for task in listed} == {
        ("noop", "COMPLETED"),
        ("profile-csv", "COMPLETED"),
        ("fail", "FAILED"),
    }
    assert sorted(task["tool_id"] for task in listed) == (
        ["fail"] + ["noop"] * 26 + ["profile-csv"] * 2
    )
    (failed,) = [task for task in listed if task["tool_id"] == "fail"]
    assert failed["attempts"] == 2  # its first attempt, and the bulk retry's


def test_the_readme_has_no_shell_block_the_test_would_miss() -> None:
    assert fence_languages(README) <= {"sh", "text", "python"}  # python: test_readme_python
    for block in shell_blocks(README):
        lines = commands(block)
        if any(long_running_or_excepted(line) for line in lines):
            for line in lines:  # taken one by one, so each must stand alone
                assert words(line), line
                assert not line.rstrip().endswith("\\"), line


def test_every_exception_is_in_the_readme() -> None:
    lines = [line for block in shell_blocks(README) for line in commands(block)]

    for start in EXCEPTIONS:
        assert any(line.startswith(start) for line in lines), f"{start!r} is no longer there"


def test_make_run_serves_as_the_readme_says() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()

    assert re.search(r"^VENV := \.venv$", makefile, re.M)
    assert re.search(r"^BIN := \$\(VENV\)/bin$", makefile, re.M)
    recipe = re.search(r"^run: .*\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe is not None
    assert recipe.group(1).strip().replace("$(BIN)", ".venv/bin") == MAKE_RUN_SERVES
