"""Leases and fencing: an attempt holds its task only while its process renews the lease, and a
stale attempt can never overwrite a newer one."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from execution.executor import ExecutorLimits, RunOutcome, TaskExecutor
from execution.models import utcnow
from execution.status import TaskStatus
from execution.store import TaskStore
from execution.time_limits import SoftTimeLimit
from execution.tools.registry import ToolRegistry
from tests.helpers import claim, queued_task, wait_until
from tests.tools import Gate

LEASE = 1.0
HEARTBEAT = 0.1


def _executor(
    store: TaskStore, registry: ToolRegistry, data_dir: Path, **limits: float
) -> TaskExecutor:
    return TaskExecutor(
        store=store,
        registry=registry,
        data_dir=data_dir,
        limits=ExecutorLimits(lease_seconds=LEASE, heartbeat_seconds=HEARTBEAT, **limits),  # type: ignore[arg-type]
        hooks=(SoftTimeLimit(),),
    )


@pytest.fixture
def leased(store: TaskStore, registry: ToolRegistry, data_dir: Path) -> TaskExecutor:
    """An executor with a one-second lease, renewed every 0.1 s."""
    return _executor(store, registry, data_dir)


class Background:
    """`executor.run(task_id)` in a thread of its own, and what it returned."""

    def __init__(self, executor: TaskExecutor, task_id: str) -> None:
        self.outcome: RunOutcome | None = None
        self.ident: int | None = None
        self._thread = threading.Thread(target=self._run, args=(executor, task_id), daemon=True)
        self._thread.start()

    def _run(self, executor: TaskExecutor, task_id: str) -> None:
        self.ident = threading.get_ident()
        self.outcome = executor.run(task_id)

    def join(self) -> RunOutcome:
        self._thread.join(timeout=15)
        assert self.outcome is not None, "the run did not return"
        return self.outcome


def _status(store: TaskStore, task_id: str, status: TaskStatus) -> bool:
    record = store.get(task_id)
    return record is not None and record.status is status


def test_a_claim_leases_the_task_to_its_process_and_counts_the_attempt(store: TaskStore) -> None:
    task_id = queued_task(store).task_id

    record = claim(store, task_id, lease_seconds=30)

    assert record is not None
    assert (record.status, record.attempts, record.lease_owner) == (
        TaskStatus.PROCESSING,
        1,
        "test-host:1",
    )
    assert record.lease_expires_at is not None
    assert timedelta(seconds=29) < record.lease_expires_at - utcnow() <= timedelta(seconds=30)


def test_a_live_lease_refuses_a_second_claim_and_an_expired_one_gives_way(
    store: TaskStore,
) -> None:
    task_id = queued_task(store).task_id
    assert claim(store, task_id, lease_seconds=30) is not None
    assert claim(store, task_id) is None  # a redelivered copy while the first still runs

    live = store.get(task_id)
    assert live is not None
    assert store.renew_lease(task_id, attempt=1, lease_seconds=-1) is not None  # it died
    second = claim(store, task_id)

    assert second is not None
    assert (second.status, second.attempts) == (TaskStatus.PROCESSING, 2)


def test_a_stale_attempt_can_never_overwrite_the_newer_one(store: TaskStore) -> None:
    task_id = queued_task(store).task_id
    assert claim(store, task_id, lease_seconds=-1) is not None
    assert claim(store, task_id) is not None  # attempt 2 took over
    history = store.events(task_id)

    assert store.record_progress(task_id, attempt=1, progress=50, message="late") is None
    assert not store.complete(task_id, attempt=1, result={"stale": True})
    assert store.fail(task_id, attempt=1, error_code="E", error_message="stale") is None
    assert store.renew_lease(task_id, attempt=1, lease_seconds=30) is None
    assert store.events(task_id) == history

    assert store.complete(task_id, attempt=2, result={"fresh": True})
    done = store.get(task_id)
    assert done is not None
    assert (done.status, done.result, done.lease_owner, done.lease_expires_at) == (
        TaskStatus.COMPLETED,
        {"fresh": True},
        None,
        None,
    )


def test_the_heartbeat_keeps_a_silent_tool_s_lease_and_a_cancel_ends_it(
    store: TaskStore, leased: TaskExecutor
) -> None:
    task_id = queued_task(store, tool_id="silent").task_id
    run = Background(leased, task_id)
    wait_until(lambda: _status(store, task_id, TaskStatus.PROCESSING), what="the claim")

    time.sleep(LEASE * 2)  # the tool says nothing for twice its lease
    assert claim(store, task_id) is None, "a silent tool lost its lease"
    running = store.get(task_id)
    assert running is not None
    assert running.lease_expires_at is not None
    assert running.lease_expires_at > utcnow()

    assert store.request_cancel(task_id, reason="cancel requested by tester") is not None
    wait_until(lambda: _status(store, task_id, TaskStatus.CANCELLED), what="the cancel")
    assert run.join() is RunOutcome.ABANDONED  # what it returned after the stop was dropped
    record = store.get(task_id)
    assert record is not None
    assert (record.status, record.result, record.lease_owner) == (TaskStatus.CANCELLED, None, None)


def test_a_cancel_stops_a_tool_at_its_next_progress_call(
    store: TaskStore, leased: TaskExecutor
) -> None:
    task_id = queued_task(store, tool_id="tick-until-stopped").task_id
    run = Background(leased, task_id)
    wait_until(lambda: _status(store, task_id, TaskStatus.PROCESSING), what="the claim")

    assert store.request_cancel(task_id, reason="cancel requested by tester") is not None

    assert run.join() in (RunOutcome.CANCELLED, RunOutcome.ABANDONED)
    record = store.get(task_id)
    assert record is not None
    assert record.status is TaskStatus.CANCELLED
    messages = [e.message for e in store.events(task_id)]
    assert "cancel requested by tester" in messages
    assert messages[-1] == "cancelled while running"


def test_past_its_hard_limit_an_attempt_ends_failed_while_the_tool_still_hangs(
    store: TaskStore, leased: TaskExecutor
) -> None:
    abandoned: list[int] = []
    leased.leases.subscribe(abandoned.append)
    task_id = queued_task(store, tool_id="hangs").task_id  # time_limit=1

    run = Background(leased, task_id)
    wait_until(lambda: _status(store, task_id, TaskStatus.FAILED), what="the hard limit")

    record = store.get(task_id)
    assert record is not None
    assert (record.error_code, record.error_message) == (
        "TIME_LIMIT_EXCEEDED",
        "hard time limit 1s exceeded",
    )
    assert run.outcome is None, "the tool was supposed to be still hanging"
    assert abandoned == [run.ident]  # its thread was reported, so a pool can replace it


def test_at_its_soft_limit_a_tool_is_told_to_stop(
    store: TaskStore, registry: ToolRegistry, data_dir: Path
) -> None:
    executor = _executor(store, registry, data_dir, soft_time_limit=0.3)
    task_id = queued_task(store, tool_id="silent").task_id

    assert executor.run(task_id) is RunOutcome.COMPLETED

    record = store.get(task_id)
    assert record is not None
    assert record.result == {"stopped": True}


def test_releasing_running_attempts_hands_them_to_recovery_at_once(
    store: TaskStore, leased: TaskExecutor, gate: Gate
) -> None:
    task_id = queued_task(store, tool_id="gate").task_id
    run = Background(leased, task_id)
    wait_until(lambda: _status(store, task_id, TaskStatus.PROCESSING), what="the claim")

    assert leased.leases.release_all() == 1

    assert [task.task_id for task in store.lost(limit=10)] == [task_id]
    assert claim(store, task_id) is not None  # the next attempt may take it
    gate.open()
    assert run.join() is RunOutcome.ABANDONED  # the released attempt's result is fenced off


def test_an_attempt_past_every_allowance_fails_worker_lost_without_running(
    store: TaskStore, registry: ToolRegistry, data_dir: Path
) -> None:
    executor = _executor(store, registry, data_dir, lost_retries=0)
    task_id = queued_task(store, tool_id="echo").task_id
    assert claim(store, task_id, lease_seconds=-1) is not None  # attempt 1 died

    assert executor.run(task_id) is RunOutcome.FAILED  # a redelivered message claims it

    record = store.get(task_id)
    assert record is not None
    assert (record.status, record.attempts, record.error_code, record.result) == (
        TaskStatus.FAILED,
        2,
        "WORKER_LOST",
        None,
    )


def test_stopping_the_keeper_ends_its_thread_and_a_later_claim_starts_it_again(
    store: TaskStore, leased: TaskExecutor
) -> None:
    others = {t for t in threading.enumerate() if t.name == "switchyard-leases"}

    def keepers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "switchyard-leases"} - others

    assert leased.run(queued_task(store, tool_id="noop").task_id) is RunOutcome.COMPLETED
    assert keepers(), "a claim starts the keeper"

    leased.leases.stop()
    assert not keepers(), "the keeper outlived its stop"

    assert leased.run(queued_task(store, tool_id="noop").task_id) is RunOutcome.COMPLETED
    assert keepers()
    leased.leases.stop()
