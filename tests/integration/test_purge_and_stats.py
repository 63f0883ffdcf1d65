"""Purge and queue stats on a live stack: a real Redis, `switchyard serve` with a one-thread
pool, `switchyard worker` processes the tests start and stop, and the CLI run as an operator
runs it.

- a purge by tool cancels the tool's QUEUED tasks on both backends and leaves its running one;
  the pool entries and Celery messages of the purged tasks then arrive and run nothing;
- `celery purge` drops the messages but leaves the rows QUEUED: the recovery sweep publishes
  them again and each runs exactly once;
- stats answer on the live stack, and, saying the broker is down, with Redis frozen or stopped.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from execution.status import TaskStatus
from tests.integration.faults import TOOLS, ApiProcess, FaultRig, fault_rig, poll
from tests.integration.workers import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

BOUND = 60.0
"""Seconds a test waits for the stack to do something: generous, never asserted on."""
REASON = "bad batch"
BACKENDS = ("thread", "celery")


@dataclass
class Stack:
    """The rig and its one API process."""

    rig: FaultRig
    api: ApiProcess

    def post(self, client: httpx.Client, tool_id: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST /tasks; the task as accepted."""
        response = client.post("/tasks", json={"tool_id": tool_id, "payload": payload})
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def status(self, task_id: str) -> TaskStatus:
        """The task's status now."""
        row = self.rig.store.get(task_id)
        assert row is not None
        return row.status

    def stats(self) -> dict[str, Any]:
        """GET /queue/stats."""
        with self.api.new_client() as client:
            response = client.get("/queue/stats")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def switchyard(self, *args: str, answer: str | None = None) -> subprocess.CompletedProcess[str]:
        """The CLI, talking to this stack's API with the operator key."""
        return subprocess.run(
            [sys.executable, "-m", "api.cli", *args, "--url", self.api.url],
            env={**self.rig.env, "SWITCHYARD_API_KEY": self.rig.token, "COLUMNS": "200"},
            cwd=self.rig.workdir,
            input=answer,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The API (one pool thread, Celery on, no tool sent there by default) over a fresh rig."""
    env = {
        "USE_CELERY": "true",
        "CELERY_ROLLOUT_PERCENTAGE": "0",
        "BACKGROUND_WORKERS": "1",
        "SWITCHYARD_TOOLS": f"{TOOLS},tests.integration.purge_tools",
    }
    with fault_rig(tmp_path_factory.mktemp("purge"), **env) as rig:
        yield Stack(rig, rig.start_api())


def _not_claimed(log: str) -> set[str]:
    """Task ids a process's log says it received and found nothing to run."""
    return set(re.findall(r"task\.not_claimed\W.*?task_id\W+([0-9a-f-]{36})", log))


def test_a_purge_by_tool_cancels_on_both_backends_and_their_copies_run_nothing(
    stack: Stack,
) -> None:
    rig, api = stack.rig, stack.api
    release = rig.workdir / "release-purge"
    held = {"release_file": str(release)}
    rig.set_rollout(api, tool_overrides={"held": 50})
    tasks: list[dict[str, Any]] = []
    with api.new_client() as client:
        # Until one lands on threads and takes the only pool thread (no worker runs yet)
        while not any(t["backend"] == "thread" for t in tasks):
            assert len(tasks) < 40, "no held task was routed to threads at 50 %"
            tasks.append(stack.post(client, "held", held))
        running = next(t["task_id"] for t in tasks if t["backend"] == "thread")
        poll(
            lambda: stack.status(running) is TaskStatus.PROCESSING,
            what="the held task to run",
            timeout=BOUND,
            rig=rig,
        )
        queued: dict[str, str] = {}
        while min(sum(b == backend for b in queued.values()) for backend in BACKENDS) < 3:
            assert len(tasks) < 80, "the 50 % split never gave both backends three tasks"
            tasks.append(stack.post(client, "held", held))
            queued = {t["task_id"]: t["backend"] for t in tasks if t["task_id"] != running}
        behind = [stack.post(client, "noop", {})["task_id"] for _ in range(2)]  # on threads

    dry = stack.switchyard("queue", "purge", "--tool", "held", "--dry-run", "--reason", REASON)

    assert dry.returncode == 0, dry.stderr
    assert f"{len(queued)} QUEUED task(s) would be cancelled" in dry.stdout
    assert "1 task(s) of this selection running now: not touched" in dry.stdout
    assert {stack.status(task_id) for task_id in queued} == {TaskStatus.QUEUED}

    done = stack.switchyard("queue", "purge", "--tool", "held", "--reason", REASON, answer="y\n")

    assert done.returncode == 0, done.stderr
    assert f"Cancel these {len(queued)} QUEUED task(s)? [y/N]:" in done.stdout
    assert f"{len(queued)} QUEUED task(s) cancelled" in done.stdout
    for task_id in queued:
        row = rig.store.get(task_id)
        assert row is not None
        assert (row.status, row.message) == (TaskStatus.CANCELLED, f"purged by faults: {REASON}")
    assert stack.status(running) is TaskStatus.PROCESSING

    # The pool's entries come up behind the running task, the messages once a worker runs
    release.touch()
    poll(
        lambda: all(stack.status(t) is TaskStatus.COMPLETED for t in [running, *behind]),
        what="the running held task and the noop tasks behind the purged ones to complete",
        timeout=BOUND,
        rig=rig,
    )
    worker = rig.start_worker()
    try:
        on_celery = {t for t, backend in queued.items() if backend == "celery"}
        poll(
            lambda: rig.redis_waiting() == 0 and on_celery <= _not_claimed(worker.log()),
            what="the worker to take every purged task's message",
            timeout=BOUND,
            rig=rig,
        )
    finally:
        worker.stop()
    on_threads = set(queued) - on_celery
    assert on_threads <= _not_claimed("".join(p.read_text() for p in api.logs))
    ledger = rig.ledger()
    assert len(ledger.get(running, [])) == 1
    for task_id in queued:
        row = rig.store.get(task_id)
        assert row is not None
        assert (row.status, row.attempts, ledger.get(task_id)) == (TaskStatus.CANCELLED, 0, None)
        assert TaskStatus.PROCESSING not in {e.status for e in rig.store.events(task_id)}


def test_celery_purge_leaves_rows_queued_and_the_sweep_publishes_them_again(
    stack: Stack,
) -> None:
    rig, api = stack.rig, stack.api
    rig.set_rollout(api, tool_overrides={"ledger": 100})
    with api.new_client() as client:
        ids = [stack.post(client, "ledger", {"work_seconds": 0.05, "steps": 1}) for _ in range(6)]
    assert {t["backend"] for t in ids} == {"celery"}
    task_ids = [t["task_id"] for t in ids]
    poll(lambda: rig.redis_waiting() >= len(ids), what="the messages", timeout=BOUND, rig=rig)

    purged = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "api.worker", "purge", "-f"],
        env=rig.env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert purged.returncode == 0, purged.stderr
    dropped = re.search(r"Purged (\d+) messages?", purged.stdout)
    assert dropped is not None, purged.stdout
    assert int(dropped.group(1)) >= len(ids)
    assert {stack.status(task_id) for task_id in task_ids} == {TaskStatus.QUEUED}

    worker = rig.start_worker()
    try:
        poll(
            lambda: all(stack.status(t) is TaskStatus.COMPLETED for t in task_ids),
            what="every task dropped by celery purge to be published again and run",
            timeout=BOUND,
            rig=rig,
        )
    finally:
        worker.stop()
    ledger = rig.ledger()
    for task_id in task_ids:
        events = rig.store.events(task_id)
        assert len(ledger[task_id]) == 1
        assert sum(e.status is TaskStatus.COMPLETED for e in events) == 1
        assert any((e.message or "").startswith("published again") for e in events)


def test_stats_on_the_live_stack(stack: Stack) -> None:
    rig, api = stack.rig, stack.api
    release = rig.workdir / "release-stats"
    held = {"release_file": str(release)}
    rig.set_rollout(api, tool_overrides={"held": 0})
    worker = rig.start_worker()
    try:
        with api.new_client() as client:
            first = stack.post(client, "held", held)["task_id"]
            stack.post(client, "held", held)  # waits behind it in the pool's queue
        poll(
            lambda: stack.status(first) is TaskStatus.PROCESSING,
            what="the first held task to run",
            timeout=BOUND,
            rig=rig,
        )
        body = poll(
            lambda: (b := stack.stats())["broker"]["workers"] == [worker.hostname] and b,
            what="the stats to list the worker",
            timeout=BOUND,
            rig=rig,
        )
        cli = stack.switchyard("queue", "stats")
    finally:
        release.touch()
        worker.stop()

    assert body["database"] == "ok"
    assert body["tasks"]["PROCESSING"]["thread"] == 1
    assert body["tasks"]["QUEUED"]["thread"] == 1
    assert body["thread_pool"] == {
        "state": "ok",
        "workers": 1,
        "busy": 1,
        "idle": 0,
        "waiting": 1,
        "capacity": body["thread_pool"]["capacity"],
    }
    assert body["backends"]["thread"]["queued"] == 1
    assert body["backends"]["thread"]["oldest_waiting_seconds"] >= 0
    assert body["broker"]["state"] == "ok"
    assert set(body["broker"]["queues"]) == {"default"}
    assert body["paused"] == []
    assert cli.returncode == 0, cli.stderr
    assert f"celery broker at {rig.redis.url}: ok" in cli.stdout
    assert f"celery workers: {worker.hostname}" in cli.stdout


def test_stats_answer_with_redis_frozen_then_stopped_and_say_the_broker_is_down(
    stack: Stack,
) -> None:
    rig = stack.rig
    rig.redis.process.send_signal(signal.SIGSTOP)
    try:
        frozen = poll(
            lambda: (b := stack.stats())["broker"]["state"] == "broker_down" and b,
            what="the stats to say the frozen broker is down",
            timeout=BOUND,
            rig=rig,
        )
    finally:
        rig.redis.process.send_signal(signal.SIGCONT)
    rig.stop_redis(signal.SIGKILL)
    stopped = poll(
        lambda: "refused" in str((b := stack.stats())["broker"]["reason"]) and b,
        what="the stats to say the stopped broker refuses connections",
        timeout=BOUND,
        rig=rig,
    )
    cli = stack.switchyard("queue", "stats")

    for body in (frozen, stopped):
        assert body["database"] == "ok"
        assert body["broker"]["queues"] is None
        assert body["broker"]["reason"].startswith(f"the broker at {rig.redis.url} does not answer")
        assert "the celery backend cannot take work (broker_down)" in body["reasons"]
        assert set(body["tasks"]) == {s.value for s in TaskStatus} - {"CREATED"}
    assert cli.returncode == 0, cli.stderr
    assert f"celery broker at {rig.redis.url}: broker down" in cli.stdout
    assert "refused" in cli.stdout
