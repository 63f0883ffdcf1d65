"""Recovery: lost attempts run again or fail WORKER_LOST; Celery tasks the broker may have lost
are published again; any number of sweepers at once do each thing once."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from backends.testing import RecordingBackend
from dispatch.recovery import Recovery, SweepReport
from dispatch.rollout.policy import RolloutPolicy
from dispatch.rollout.watch import StaticRollout
from execution.records import TASKS, TaskRecord
from execution.status import TaskStatus
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry
from tests.helpers import claim, queued_task


class Backends:
    """A recording thread and celery backend."""

    def __init__(self) -> None:
        self.thread = RecordingBackend(name="thread")
        self.celery = RecordingBackend(name="celery")

    def recovery(
        self,
        store: TaskStore,
        registry: ToolRegistry,
        *,
        percentage: float = 0,
        lost_retries: int = 2,
        republish_after: float = 300,
    ) -> Recovery:
        policy = RolloutPolicy(use_celery=True, percentage=percentage, salt="switchyard")
        return Recovery(
            store=store,
            registry=registry,
            backends={"thread": self.thread, "celery": self.celery},
            rollout=StaticRollout(policy),
            lost_retries=lost_retries,
            republish_after=republish_after,
            interval=60,
        )


@pytest.fixture
def backends() -> Backends:
    return Backends()


def _lost(store: TaskStore, *, tool_id: str = "echo", backend: str = "thread") -> TaskRecord:
    """A task whose attempt's process died: PROCESSING, lease expired."""
    task_id = queued_task(store, tool_id=tool_id, backend=backend).task_id
    record = claim(store, task_id, lease_seconds=-1)
    assert record is not None
    return record


def _get(store: TaskStore, task_id: str) -> TaskRecord:
    record = store.get(task_id)
    assert record is not None
    return record


def test_a_lost_attempt_is_queued_again_on_the_backend_the_rollout_gives_now(
    store: TaskStore, registry: ToolRegistry, backends: Backends
) -> None:
    lost = _lost(store, backend="thread")
    recovery = backends.recovery(store, registry, percentage=100)

    assert recovery.sweep() == SweepReport(requeued=1)

    record = _get(store, lost.task_id)
    assert (record.status, record.backend, record.attempts) == (TaskStatus.QUEUED, "celery", 1)
    assert (record.lease_owner, record.lease_expires_at) == (None, None)
    assert [t.task_id for t in backends.celery.submitted] == [lost.task_id]
    assert store.events(lost.task_id)[-1].message == (
        "requeued: attempt 1 lost its worker (test-host:1; lease expired)"
    )


def test_a_live_lease_is_left_alone(
    store: TaskStore, registry: ToolRegistry, backends: Backends
) -> None:
    task_id = queued_task(store).task_id
    assert claim(store, task_id, lease_seconds=30) is not None

    assert backends.recovery(store, registry).sweep() == SweepReport()
    assert _get(store, task_id).status is TaskStatus.PROCESSING


def test_a_task_out_of_attempts_fails_worker_lost(
    store: TaskStore, registry: ToolRegistry, backends: Backends
) -> None:
    lost = _lost(store)

    assert backends.recovery(store, registry, lost_retries=0).sweep() == SweepReport(failed=1)

    record = _get(store, lost.task_id)
    assert (record.status, record.error_code) == (TaskStatus.FAILED, "WORKER_LOST")
    assert record.error_message == (
        "attempt 1 lost its worker (test-host:1; lease expired), and no attempts are left"
    )
    assert backends.thread.submitted == []


def test_a_lost_task_a_caller_cancelled_ends_cancelled(
    store: TaskStore, registry: ToolRegistry, backends: Backends
) -> None:
    lost = _lost(store)
    assert store.request_cancel(lost.task_id, reason="cancel requested by tester") is not None

    assert backends.recovery(store, registry).sweep() == SweepReport(cancelled=1)
    assert _get(store, lost.task_id).status is TaskStatus.CANCELLED


def test_many_sweepers_at_once_recover_each_task_once(
    store: TaskStore, registry: ToolRegistry, backends: Backends
) -> None:
    lost = [_lost(store) for _ in range(20)]
    sweepers = [backends.recovery(store, registry) for _ in range(6)]
    start = threading.Barrier(len(sweepers))
    reports: list[SweepReport] = []

    def sweep(recovery: Recovery) -> None:
        start.wait()
        reports.append(recovery.sweep())

    threads = [threading.Thread(target=sweep, args=(s,)) for s in sweepers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sum(report.requeued for report in reports) == len(lost)
    assert sorted(t.task_id for t in backends.thread.submitted) == sorted(t.task_id for t in lost)
    for task in lost:
        requeues = [
            e for e in store.events(task.task_id) if (e.message or "").startswith("requeued")
        ]
        assert len(requeues) == 1


def test_a_celery_task_never_handed_over_is_published(
    store: TaskStore, registry: ToolRegistry, backends: Backends
) -> None:
    task = queued_task(store, backend="celery")
    assert store.mark_undispatched(task.task_id, reason="waiting for the broker") is not None

    assert backends.recovery(store, registry).sweep() == SweepReport(published=1)

    record = _get(store, task.task_id)
    assert record.dispatched_at is not None
    assert [t.task_id for t in backends.celery.submitted] == [task.task_id]


def test_an_unclaimed_celery_task_is_published_again_only_after_the_bound(
    store: TaskStore, registry: ToolRegistry, backends: Backends
) -> None:
    task = queued_task(store, backend="celery")

    assert backends.recovery(store, registry, republish_after=300).sweep() == SweepReport()
    assert backends.recovery(store, registry, republish_after=1).sweep() == SweepReport()
    _age(store, task.task_id, seconds=2)
    assert backends.recovery(store, registry, republish_after=1).sweep() == SweepReport(published=1)
    assert store.events(task.task_id)[-1].message == (
        "published again: no worker claimed it within 1s (the broker may have lost it)"
    )


def test_a_broker_still_down_leaves_the_task_waiting_for_the_next_round(
    store: TaskStore, registry: ToolRegistry, backends: Backends
) -> None:
    task = queued_task(store, backend="celery")
    assert store.mark_undispatched(task.task_id, reason="waiting for the broker") is not None
    backends.celery.unavailable = "broker unreachable"

    assert backends.recovery(store, registry).sweep() == SweepReport()
    record = _get(store, task.task_id)
    assert (record.status, record.dispatched_at) == (TaskStatus.QUEUED, None)

    backends.celery.unavailable = None
    assert backends.recovery(store, registry).sweep() == SweepReport(published=1)


def _age(store: TaskStore, task_id: str, *, seconds: float) -> None:
    """Pretend the task was handed over `seconds` earlier than it was."""
    record = _get(store, task_id)
    assert record.dispatched_at is not None
    with store.engine.begin() as conn:
        conn.execute(
            TASKS.update()
            .where(TASKS.c.task_id == task_id)
            .values(dispatched_at=record.dispatched_at - timedelta(seconds=seconds))
        )
