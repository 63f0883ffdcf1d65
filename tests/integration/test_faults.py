"""Fault tests with real processes: kill -9 Celery workers and the API mid-task, stop Redis
during submission, restart it empty under waiting tasks, and run tools that outlive their hard
limit or hang. Each submits a few hundred tasks of a ledger tool (fault_tools.py) and checks,
with `check_run`, that none is lost, each ended once, every failure says why, and any second
run of a tool followed a killed or timed-out attempt. Each prints one `FAULT-REPORT {json}` line
(appended to $FAULT_REPORT if set).

Run alone: `.venv/bin/python -m pytest -m faults tests/integration/test_faults.py -s`.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from execution.status import TaskStatus
from tests.integration.fault_tools import HARD_LIMIT, OVERRUN_RETRY
from tests.integration.faults import (
    COMPLETES,
    TERMINAL_BOUND,
    TIME_LIMIT_EXCEEDED,
    Expected,
    FaultRig,
    Submission,
    Submitted,
    assert_clean,
    check_run,
    fault_rig,
    poll,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(300)]

LEDGER_TASK: tuple[str, dict[str, Any]] = ("ledger", {"work_seconds": 0.3, "steps": 3})
"""Writes its ledger row, then works 0.3 s in three progress steps."""
REDIS_TASK: tuple[str, dict[str, Any]] = ("ledger", {"work_seconds": 0.1, "steps": 1})
"""For the broker faults, where what is at stake is the message, not the running tool."""
CELERY = {"USE_CELERY": "true", "CELERY_ROLLOUT_PERCENTAGE": "100", "CELERY_UNAVAILABLE": "reject"}
THREADS_ONLY = {"USE_CELERY": "false"}


def queued(rig: FaultRig) -> int:
    """Tasks QUEUED now."""
    return rig.counts().get(TaskStatus.QUEUED.value, 0)


def test_kill_9_celery_workers_mid_task(tmp_path: Path) -> None:
    kills, tasks = 3, 240
    with fault_rig(tmp_path, **CELERY) as rig:
        api = rig.start_api()
        rig.start_worker()
        rig.start_worker()
        started = time.monotonic()
        submitter = rig.submit_in_background(api, [LEDGER_TASK] * tasks)
        interrupted, kill_times = [], []
        for n in range(1, kills + 1):
            victim, running = poll(
                rig.busiest_worker, what=f"a worker running tasks (kill {n})", timeout=60, rig=rig
            )
            rig.kill_worker(victim)
            kill_times.append(round(time.monotonic() - started, 1))
            interrupted.append(running)
            rig.start_worker()
        report = check_run(
            rig,
            fault="kill -9 celery worker mid-task",
            submissions=submitter.join(),
            kills_or_restarts=kills,
            started=started,
            interrupted=interrupted,
            extra={"killed_at_seconds": kill_times},
        )
        assert_clean(rig, report)


def test_kill_9_the_api_with_thread_tasks_queued_and_running(tmp_path: Path) -> None:
    kills, tasks = 2, 300
    with fault_rig(tmp_path, **THREADS_ONLY, BACKGROUND_WORKERS="4") as rig:
        api = rig.start_api()
        started = time.monotonic()
        submissions = rig.submit(api, [LEDGER_TASK] * tasks)
        interrupted, kill_times = [], []
        for n in range(1, kills + 1):

            def running_with_a_backlog() -> set[tuple[str, int]] | None:
                running = rig.running_in(api.pid)
                return running if running and queued(rig) >= 20 else None

            running = poll(
                running_with_a_backlog,
                what=f"the API running tasks with more queued (kill {n})",
                timeout=60,
                rig=rig,
            )
            api.kill()
            kill_times.append(round(time.monotonic() - started, 1))
            interrupted.append(running)
            api.start()
        report = check_run(
            rig,
            fault="kill -9 API with thread tasks",
            submissions=submissions,
            kills_or_restarts=kills,
            started=started,
            interrupted=interrupted,
            extra={"killed_at_seconds": kill_times},
        )
        assert_clean(rig, report)


def test_redis_stopped_during_submission_and_started_again(tmp_path: Path) -> None:
    tasks = 360
    with fault_rig(tmp_path, **CELERY) as rig:
        api = rig.start_api()
        rig.start_worker()
        started = time.monotonic()
        # Paced (about 40 a second, faster than the worker runs them) so submissions span
        # before, during and after the outage, with tasks waiting in Redis when it stops.
        submitter = rig.submit_in_background(api, [REDIS_TASK] * tasks, threads=2, pace=0.05)
        poll(
            lambda: submitter.done >= 100 and queued(rig) >= 10,
            what="100 submissions and tasks waiting in Redis",
            timeout=60,
            rig=rig,
        )
        waiting_at_stop = queued(rig)
        rig.stop_redis(signal.SIGKILL)
        stopped_at = time.monotonic()
        down_from = submitter.done
        poll(
            lambda: submitter.done >= down_from + 10 and time.monotonic() - stopped_at >= 1,
            what="submissions while Redis is down",
            timeout=60,
            rig=rig,
        )
        rig.start_redis_again()
        restarted_at = time.monotonic()
        submissions = submitter.join()
        sorted_ = Submitted.of(submissions)
        after = [s for s in sorted_.accepted if s.answered_at > restarted_at]
        report = check_run(
            rig,
            fault="redis stopped during submission",
            submissions=submissions,
            kills_or_restarts=1,
            started=started,
            extra={"queued_when_redis_stopped": waiting_at_stop, "accepted_after": len(after)},
        )
        logs = f"{rig.status_line()}\n{rig.log_tails()}"
        assert waiting_at_stop > 0, f"Redis stopped with no task waiting in it\n{logs}"
        assert sorted_.rejected, f"no submission met the outage: Redis stopped too late\n{logs}"
        assert after, f"no submission was accepted after Redis came back\n{logs}"
        assert_clean(rig, report)


def test_redis_restarted_without_persistence_while_tasks_wait_in_it(tmp_path: Path) -> None:
    tasks = 300
    with fault_rig(tmp_path, **CELERY) as rig:
        api = rig.start_api()  # no worker yet: every task waits in Redis
        started = time.monotonic()
        submissions = rig.submit(api, [REDIS_TASK] * tasks)
        sorted_ = Submitted.of(submissions)
        assert len(sorted_.accepted) == tasks, [s.detail for s in sorted_.rejected + sorted_.other]
        waiting = rig.redis_waiting()
        assert waiting >= tasks, f"only {waiting} messages in Redis for {tasks} tasks"
        rig.redis_canary(plant=True)
        rig.stop_redis(signal.SIGTERM)  # a clean restart: with --save '' it keeps nothing
        rig.start_redis_again()
        # The API may publish again at once (what is under test), so the queue's length says
        # nothing here; the canary says whether Redis kept anything.
        assert not rig.redis_canary(), "Redis kept its data across the restart"
        rig.start_worker()
        rig.start_worker()
        report = check_run(
            rig,
            fault="redis restarted without persistence",
            submissions=submissions,
            kills_or_restarts=1,
            started=started,
            extra={"messages_lost_with_redis": waiting},
        )
        assert_clean(rig, report)


def test_a_tool_that_outlives_its_hard_limit_on_both_backends(tmp_path: Path) -> None:
    per_backend = 100
    always = 1 + OVERRUN_RETRY.max_retries  # outlives the limit on every attempt it gets

    def overruns(k: int) -> int:
        if k % 50 == 5:
            return always
        return 1 if k % 10 == 0 else 0

    items: list[tuple[str, dict[str, Any]]] = [
        (tool_id, {"work_seconds": 0.1, "steps": 2, "overrun_attempts": overruns(k)})
        for k in range(per_backend)
        for tool_id in ("ledger-overrun", "ledger-overrun-celery")
    ]

    def expected(s: Submission) -> Expected:
        if s.payload["overrun_attempts"] >= always:
            return (TaskStatus.FAILED, TIME_LIMIT_EXCEEDED)
        return COMPLETES

    def must_time_out(s: Submission) -> set[int]:
        return set(range(1, min(s.payload["overrun_attempts"], always) + 1))

    env = {"USE_CELERY": "true", "CELERY_ROLLOUT_PERCENTAGE": "0", "BACKGROUND_WORKERS": "4"}
    with fault_rig(tmp_path, **env) as rig:
        api = rig.start_api()
        rig.set_rollout(api, tool_overrides={"ledger-overrun-celery": 100})
        rig.start_worker()
        rig.start_worker()
        started = time.monotonic()
        submissions = rig.submit(api, items)
        backends = {
            (s.tool_id, s.backend) for s in submissions if s.status_code == 201 and s.backend
        }
        assert backends == {("ledger-overrun", "thread"), ("ledger-overrun-celery", "celery")}
        overrunning = sum(1 for _, p in items if p["overrun_attempts"])
        report = check_run(
            rig,
            fault="tool outlives its hard limit (thread + celery)",
            submissions=submissions,
            kills_or_restarts=sum(min(p["overrun_attempts"], always) for _, p in items),
            started=started,
            expected=expected,
            must_time_out=must_time_out,
            extra={"hard_limit_seconds": HARD_LIMIT, "overrunning_tasks": overrunning},
        )
        assert_clean(rig, report)


def test_a_hung_tool_on_threads_does_not_shrink_the_pool(tmp_path: Path) -> None:
    quick_tasks = 200
    with fault_rig(tmp_path, **THREADS_ONLY, BACKGROUND_WORKERS="2") as rig:
        api = rig.start_api()
        started = time.monotonic()
        hung = rig.submit(api, [("ledger-hang", {})] * 2)
        hung_ids = {s.task_id for s in hung}

        def both_hanging() -> bool:
            ledger = rig.ledger()
            return all(task_id in ledger for task_id in hung_ids)

        poll(both_hanging, what="both hanging tasks to start", timeout=30, rig=rig)
        quick = rig.submit(api, [("ledger", {"work_seconds": 0.02, "steps": 2})] * quick_tasks)

        def expected(s: Submission) -> Expected:
            return (
                (TaskStatus.FAILED, TIME_LIMIT_EXCEEDED)
                if s.tool_id == "ledger-hang"
                else COMPLETES
            )

        report = check_run(
            rig,
            fault="hung tool on threads",
            submissions=hung + quick,
            kills_or_restarts=len(hung),
            started=started,
            expected=expected,
            must_time_out=lambda s: {1} if s.tool_id == "ledger-hang" else set(),
            bound=TERMINAL_BOUND,
        )
        pool = api.health()["backends"]["thread"]
        assert_clean(rig, report)
        assert (pool["workers"], pool["alive"], pool["ok"]) == (2, 2, True), (
            f"the pool lost threads to the hung tool: {pool}\n{rig.log_tails()}"
        )
