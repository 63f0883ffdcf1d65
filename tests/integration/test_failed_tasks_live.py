"""Failed tasks on a live stack: a real Redis, `switchyard serve` and a `switchyard worker`, and
the CLI run as an operator runs it. Tasks of a tool that fails its first attempt fail on threads
and on Celery; `failed list` shows them all; `failed retry --tool ... --since 1h` retries them
on the backend the rollout gives the tool now, and each completes, run exactly once more."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from execution.status import TaskStatus
from tests.integration.faults import TOOLS, ApiProcess, FaultRig, fault_rig, poll

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

BOUND = 60.0
"""Seconds the test waits for the stack to do something: generous, never asserted on."""
TOOL = "fails-once"


@dataclass
class Stack:
    """The rig and its one API process."""

    rig: FaultRig
    api: ApiProcess

    def switchyard(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The CLI, talking to this stack's API with the operator key."""
        return subprocess.run(
            [sys.executable, "-m", "api.cli", *args, "--url", self.api.url],
            env={**self.rig.env, "SWITCHYARD_API_KEY": self.rig.token, "COLUMNS": "250"},
            cwd=self.rig.workdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def statuses(self, task_ids: list[str]) -> set[TaskStatus]:
        """The statuses of these tasks now."""
        found = set()
        for task_id in task_ids:
            record = self.rig.store.get(task_id)
            assert record is not None
            found.add(record.status)
        return found


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The API, Celery on and no tool sent there yet, over a fresh rig."""
    env = {
        "USE_CELERY": "true",
        "CELERY_ROLLOUT_PERCENTAGE": "0",
        "SWITCHYARD_TOOLS": f"{TOOLS},tests.integration.failed_tools",
    }
    with fault_rig(tmp_path_factory.mktemp("failed"), **env) as rig:
        yield Stack(rig, rig.start_api())


def test_failed_tasks_of_both_backends_are_listed_and_each_retried_once(stack: Stack) -> None:
    rig, api = stack.rig, stack.api
    with api.new_client() as client:
        posted = [client.post("/tasks", json={"tool_id": TOOL}).json() for _ in range(2)]
        rig.set_rollout(api, tool_overrides={TOOL: 100})
        posted += [client.post("/tasks", json={"tool_id": TOOL}).json() for _ in range(2)]
    # Started after the override: it never hands a Celery task of the tool back to threads.
    rig.start_worker()
    ids = [task["task_id"] for task in posted]
    assert [task["backend"] for task in posted] == ["thread", "thread", "celery", "celery"]
    poll(
        lambda: stack.statuses(ids) == {TaskStatus.FAILED},
        what="every task to fail its first attempt",
        timeout=BOUND,
        rig=rig,
    )

    listed = stack.switchyard("failed", "list", "--tool", TOOL)
    retried = stack.switchyard("failed", "retry", "--tool", TOOL, "--since", "1h", "--yes")
    poll(
        lambda: stack.statuses(ids) == {TaskStatus.COMPLETED},
        what="every retried task to complete",
        timeout=BOUND,
        rig=rig,
    )

    assert listed.returncode == 0, listed.stderr
    rows = {task_id: row for row in listed.stdout.splitlines() for task_id in ids if task_id in row}
    assert set(rows) == set(ids)
    assert all("RuntimeError" in row for row in rows.values())
    assert {
        backend for backend in ("thread", "celery") for row in rows.values() if backend in row
    } == {
        "thread",
        "celery",
    }
    assert retried.returncode == 0, retried.stderr
    assert "retried 4, skipped 0" in retried.stdout
    ledger = rig.ledger()
    for task_id in ids:
        record = rig.store.get(task_id)
        assert record is not None
        assert (record.backend, record.attempts) == ("celery", 2)
        assert [attempt for attempt, _ in ledger[task_id]] == [1, 2]
        events = rig.store.events(task_id)
        assert sum(event.status is TaskStatus.COMPLETED for event in events) == 1
