"""Batch submit and the HTTP client on a live stack: a real Redis, `switchyard serve` and a
`switchyard worker`, with a per-tool rollout sending half of the `ledger` tool's tasks to Celery.

- the typed client submits, follows a task through its event stream, and lists;
- a batch split across threads and Celery by the rollout completes, each task exactly once;
- `switchyard submit --from-file` sends a file in batches of the server's BATCH_MAX_ITEMS and
  prints the ids in line order; each of those runs exactly once too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from api.client import SwitchyardClient
from execution.status import TaskStatus
from tests.integration.faults import ApiProcess, FaultRig, fault_rig, tail

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

BOUND = 60.0
"""Seconds a test waits for every task to end: generous, never asserted on."""
BATCH_MAX_ITEMS = 20
QUICK = {"work_seconds": 0, "steps": 1}


@dataclass
class Stack:
    """The rig, its API process, and a client of it with the operator key."""

    rig: FaultRig
    api: ApiProcess
    client: SwitchyardClient

    def completed_once(self, task_ids: list[str]) -> dict[str, str]:
        """Wait until every task ended; check each COMPLETED with one execution of its tool
        (one ledger row) and one COMPLETED event; the backend each ran on."""
        ended = self.rig.wait_all_terminal(task_ids, bound=BOUND)
        assert ended is not None, f"{self.rig.status_line()}\n{self.rig.log_tails()}"
        ledger = self.rig.ledger()
        backends: dict[str, str] = {}
        for task_id in task_ids:
            record = self.rig.store.get(task_id)
            assert record is not None
            assert record.status is TaskStatus.COMPLETED, record
            assert len(ledger[task_id]) == 1, (task_id, ledger[task_id])
            events = self.rig.store.events(task_id)
            assert [e.status for e in events].count(TaskStatus.COMPLETED) == 1
            backends[task_id] = str(record.backend)
        return backends


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An API with Celery on (only `ledger` half sent there) and one worker."""
    env = {
        "USE_CELERY": "true",
        "CELERY_ROLLOUT_PERCENTAGE": "0",
        "BATCH_MAX_ITEMS": str(BATCH_MAX_ITEMS),
    }
    with fault_rig(tmp_path_factory.mktemp("batch"), **env) as rig:
        api = rig.start_api()
        rig.start_worker()
        rig.set_rollout(api, tool_overrides={"ledger": 50})
        with SwitchyardClient(api.url, rig.token, timeout=30) as client:
            yield Stack(rig, api, client)


def test_the_client_submits_follows_the_stream_and_lists(stack: Stack) -> None:
    client = stack.client

    task = client.submit("ledger", {"work_seconds": 0.3, "steps": 3}, priority=5)
    done = client.wait(task.task_id, timeout=BOUND)
    listed = client.list(tool_id="ledger", limit=500)

    assert (done.status, done.progress, done.attempts) == (TaskStatus.COMPLETED, 100, 1)
    assert task.task_id in [t.task_id for t in listed.items]
    api_log = "\n".join(tail(path, 2000) for path in stack.api.logs).splitlines()
    assert any("task.stream.ended" in line and task.task_id in line for line in api_log)


def test_a_batch_split_across_threads_and_celery_completes_each_task_once(
    stack: Stack,
) -> None:
    items = [{"tool_id": "ledger", "payload": QUICK} for _ in range(BATCH_MAX_ITEMS)]

    batch = stack.client.submit_batch(items)

    assert batch.rejected == 0
    task_ids = [task.task_id for task in batch.items]
    backends = stack.completed_once(task_ids)
    assert set(backends.values()) == {"thread", "celery"}
    assert {task.task_id: task.backend for task in batch.items} == backends


def test_submit_from_file_sends_batches_and_prints_the_ids_in_line_order(
    stack: Stack, tmp_path: Path
) -> None:
    lines = [{"tool_id": "ledger", "payload": QUICK, "priority": n % 10} for n in range(30)]
    source = tmp_path / "items.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))

    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "submit", "--from-file", str(source)],
        env={
            **stack.rig.env,
            "SWITCHYARD_URL": stack.api.url,
            "SWITCHYARD_API_KEY": stack.rig.token,
            "BATCH_MAX_ITEMS": "500",  # this shell's setting; the server's limit wins
        },
        cwd=stack.rig.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    task_ids = done.stdout.split()
    assert len(task_ids) == 30
    priorities = []
    for task_id in task_ids:
        record = stack.rig.store.get(task_id)
        assert record is not None
        priorities.append(record.priority)
    assert priorities == [line["priority"] for line in lines]
    assert set(stack.completed_once(task_ids).values()) == {"thread", "celery"}
