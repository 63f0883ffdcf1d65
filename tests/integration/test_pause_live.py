"""Pause and resume on a live stack: a real Redis, `switchyard serve` and a `switchyard worker`,
the CLI run as an operator runs it, half the tasks routed to Celery, half to threads.

A paused tool's new tasks are accepted and wait QUEUED on both backends, never handed over; a
Celery message published before the pause reaches the worker and runs nothing; a restart of
the API keeps the pause; the resume hands every waiting task over and each runs exactly once
(the fault tests' ledger and checks: none lost, none run twice).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from execution.records import TaskRecord
from execution.status import TaskStatus
from tests.integration.faults import (
    FAST_RECOVERY,
    ApiProcess,
    FaultRig,
    Submission,
    assert_clean,
    check_run,
    fault_rig,
    poll,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

BOUND = 60.0
"""Seconds a test waits for the stack to do something: generous, never asserted on."""
LEDGER: tuple[str, dict[str, Any]] = ("ledger", {"work_seconds": 0.1, "steps": 1})
SWEEP_ROUNDS = 3
"""Sweep intervals the test lets pass to show the sweeps leave held tasks alone."""


def switchyard(rig: FaultRig, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI, talking to `url` with the operator key."""
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args, "--url", url],
        env={**rig.env, "SWITCHYARD_API_KEY": rig.token, "COLUMNS": "200"},
        cwd=rig.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def submit_until(
    rig: FaultRig, api: ApiProcess, tool: tuple[str, dict[str, Any]], *, each: int
) -> list[Submission]:
    """Submit one task at a time until at least `each` went to each backend (50 % rollout)."""
    submitted: list[Submission] = []
    for _ in range(60):
        if all(sum(s.backend == b for s in submitted) >= each for b in ("thread", "celery")):
            return submitted
        submitted.extend(rig.submit(api, [tool], threads=1))
    raise AssertionError(f"60 tasks and not {each} on each backend: {submitted}")


def ids(submissions: list[Submission]) -> list[str]:
    """The task ids the API answered with."""
    return [s.task_id for s in submissions if s.task_id is not None]


def rows(rig: FaultRig, submissions: list[Submission]) -> list[TaskRecord]:
    """The rows of the submitted tasks, now."""
    found = [rig.store.get(task_id) for task_id in ids(submissions)]
    return [row for row in found if row is not None]


def test_paused_tasks_wait_on_both_backends_through_a_restart_and_run_once_on_resume(
    tmp_path: Path,
) -> None:
    with fault_rig(
        tmp_path,
        USE_CELERY="true",
        CELERY_ROLLOUT_PERCENTAGE="50",
        CELERY_UNAVAILABLE="reject",
        ROLLOUT_REFRESH_SECONDS="0.5",
        # No republish during the test: a message the broker holds is not duplicated.
        CELERY_REPUBLISH_SECONDS="120",
    ) as rig:
        api = rig.start_api()

        # Before the pause, with no worker yet: the Celery messages wait in Redis.
        before = submit_until(rig, api, LEDGER, each=2)
        published = [s for s in before if s.backend == "celery"]
        poll(lambda: rig.redis_waiting() >= len(published), what="messages", timeout=BOUND, rig=rig)

        paused = switchyard(rig, api.url, "queue", "pause", "--tool", "ledger", "--reason", "drill")
        assert paused.returncode == 0, paused.stderr
        assert "dispatch paused for ledger" in paused.stdout

        during = submit_until(rig, api, LEDGER, each=3)
        assert {s.status_code for s in during} == {202}
        assert len(rows(rig, during)) == len(during)
        for row in rows(rig, during):
            assert (row.status, row.dispatched_at) == (TaskStatus.QUEUED, None)

        # The worker receives the messages published before the pause: they run nothing.
        rig.start_worker()
        poll(
            lambda: all(row.dispatched_at is None for row in rows(rig, published)),
            what="the worker to hold the messages published before the pause",
            timeout=BOUND,
            rig=rig,
        )
        assert rig.redis_waiting() == 0

        # A restart keeps the pause; its pool's and recovery's sweeps leave the held tasks.
        api.stop()
        api.start()
        shown = switchyard(rig, api.url, "rollout", "status")
        assert "ledger (`switchyard queue resume`)" in shown.stdout, shown.stdout + shown.stderr
        time.sleep(SWEEP_ROUNDS * float(FAST_RECOVERY["RECOVERY_SWEEP_SECONDS"]))
        held = [*published, *during]
        assert {row.status for row in rows(rig, held)} == {TaskStatus.QUEUED}
        assert not any(rig.ledger().get(task_id) for task_id in ids(held))

        started = time.monotonic()
        resumed = switchyard(rig, api.url, "queue", "resume", "--tool", "ledger", "--reason", "ok")
        assert resumed.returncode == 0, resumed.stderr
        released = re.search(r"(\d+) waiting task\(s\) handed", resumed.stdout)
        assert released is not None, resumed.stdout
        # The worker's recovery sweep, woken by the change, may publish some held Celery tasks
        # first: each is handed over by one process only, and every one runs (checked below).
        assert 0 < int(released.group(1)) <= len(held)

        report = check_run(
            rig,
            fault="pause, restart, resume",
            submissions=[*before, *during],
            kills_or_restarts=1,
            started=started,
            extra={"held": len(held), "released": int(released.group(1))},
            bound=BOUND,
        )
        assert_clean(rig, report)
        assert report.lost == report.duplicated_side_effects == report.re_executions == 0
        assert {row.attempts for row in rows(rig, [*before, *during])} == {1}
        ran_on = {row.backend for row in rows(rig, held)}
        assert ran_on == {"thread", "celery"}
