"""A paused tool's tasks are accepted and wait QUEUED, never handed over, by the dispatcher and
by the recovery sweep; the resume hands them over once each, highest priority first."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import timedelta

import pytest
from sqlalchemy import update

from backends.testing import RecordingBackend
from dispatch.dispatcher import Dispatcher, NewTask
from dispatch.recovery import Recovery, SweepReport
from dispatch.rollout.policy import RolloutPolicy
from execution.dispatch_gate import held_message
from execution.models import utcnow
from execution.records import TASKS, TaskRecord
from execution.status import TaskStatus
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry
from tests.helpers import claim, queued_task

SALT = "switchyard"


@dataclass
class Switchable:
    """A rollout source a test pauses and resumes (what a RolloutWatcher is in a process)."""

    policy: RolloutPolicy

    def current(self) -> RolloutPolicy:
        """The policy in force."""
        return self.policy

    def pause(self, *tools: str) -> None:
        """Pause these tools ("*": all)."""
        self.policy = replace(self.policy, paused=frozenset(tools))


class Backends:
    """A recording thread and celery backend, the dispatcher and the recovery over them."""

    def __init__(self, store: TaskStore, registry: ToolRegistry, *, percentage: float) -> None:
        self.thread = RecordingBackend(name="thread")
        self.celery = RecordingBackend(name="celery")
        self.rollout = Switchable(RolloutPolicy(use_celery=True, percentage=percentage, salt=SALT))
        backends = {"thread": self.thread, "celery": self.celery}
        self.dispatcher = Dispatcher(
            store=store, registry=registry, backends=backends, rollout=self.rollout
        )
        self.recovery = Recovery(
            store=store,
            registry=registry,
            backends=backends,
            rollout=self.rollout,
            lost_retries=2,
            republish_after=300,
            interval=60,
        )

    def handed_over(self) -> list[str]:
        """Task ids given to either backend, in order."""
        return [t.task_id for t in [*self.thread.submitted, *self.celery.submitted]]


@pytest.fixture
def threads(store: TaskStore, registry: ToolRegistry) -> Backends:
    """Every new task routed to threads."""
    return Backends(store, registry, percentage=0)


@pytest.fixture
def celery(store: TaskStore, registry: ToolRegistry) -> Backends:
    """Every new task routed to Celery."""
    return Backends(store, registry, percentage=100)


def _get(store: TaskStore, task_id: str) -> TaskRecord:
    record = store.get(task_id)
    assert record is not None
    return record


def _submit(backends: Backends, tool_id: str = "noop", priority: int | None = None) -> TaskRecord:
    return backends.dispatcher.submit(
        NewTask(tool_id=tool_id, payload={}, user_id="ann", priority=priority)
    )


@pytest.mark.parametrize("paused", ["noop", "*"])
def test_a_new_task_of_a_paused_tool_is_accepted_and_held_queued(
    celery: Backends, store: TaskStore, paused: str
) -> None:
    celery.rollout.pause(paused)
    celery.celery.unavailable = "the broker is not even asked"

    task = _submit(celery)

    row = _get(store, task.task_id)
    assert (row.status, row.backend, row.dispatched_at) == (TaskStatus.QUEUED, "celery", None)
    assert row.message == held_message("noop") == task.message
    assert celery.handed_over() == []
    assert [e.message for e in store.events(task.task_id)] == ["created", held_message("noop")]


def test_a_held_task_needs_no_room_in_its_backend(
    threads: Backends, store: TaskStore, registry: ToolRegistry
) -> None:
    threads.rollout.pause("noop")

    class Full(RecordingBackend):
        def check_capacity(self, tasks: int = 1) -> None:
            raise AssertionError("a held task must not ask for room")

    threads.dispatcher.backends = {"thread": Full(name="thread")}
    assert _submit(threads).status is TaskStatus.QUEUED


def test_other_tools_are_dispatched_as_usual(threads: Backends) -> None:
    threads.rollout.pause("sleep")

    task = _submit(threads)

    assert threads.handed_over() == [task.task_id]
    assert task.dispatched_at is not None


def test_a_retry_of_a_paused_tool_is_held(threads: Backends, store: TaskStore) -> None:
    task = _submit(threads)
    assert store.cancel(task.task_id, reason="cancelled by ann") is not None
    threads.rollout.pause("noop")

    retried = threads.dispatcher.retry(task.task_id, actor="ops")

    assert retried is not None
    assert (retried.status, retried.dispatched_at) == (TaskStatus.QUEUED, None)
    assert retried.message == held_message("noop")
    assert threads.handed_over() == [task.task_id]  # the first run only


def test_resume_hands_held_tasks_over_highest_priority_first_then_oldest(
    threads: Backends, celery: Backends, store: TaskStore
) -> None:
    celery.rollout.pause("*")
    low = _submit(celery, priority=1)
    high = _submit(celery, priority=8)
    low_later = _submit(celery, priority=1)
    celery.rollout.pause()

    released = celery.dispatcher.release(tool_id=None)

    assert released == 3
    assert celery.handed_over() == [high.task_id, low.task_id, low_later.task_id]
    for task in (low, high, low_later):
        row = _get(store, task.task_id)
        assert row.dispatched_at is not None
        assert row.message == "released: dispatch of noop resumed"
    assert celery.dispatcher.release(tool_id=None) == 0  # once each


def test_resuming_one_tool_leaves_the_others_held(celery: Backends, store: TaskStore) -> None:
    celery.rollout.pause("noop", "sleep")
    noop = _submit(celery)
    sleep = celery.dispatcher.submit(NewTask(tool_id="sleep", payload={}, user_id="ann"))
    celery.rollout.pause("sleep")

    assert celery.dispatcher.release(tool_id="noop") == 1
    assert celery.dispatcher.release(tool_id=None) == 0  # sleep is still paused: not it
    assert celery.handed_over() == [noop.task_id]
    assert _get(store, sleep.task_id).dispatched_at is None


def test_what_a_backend_refuses_on_resume_waits_for_the_sweeps(
    celery: Backends, store: TaskStore
) -> None:
    celery.rollout.pause("*")
    first, second = _submit(celery), _submit(celery)
    celery.rollout.pause()
    celery.celery.unavailable = "broker down"

    assert celery.dispatcher.release(tool_id=None) == 0

    for task in (first, second):
        row = _get(store, task.task_id)
        assert (row.status, row.dispatched_at) == (TaskStatus.QUEUED, None)
    celery.celery.unavailable = None
    assert celery.recovery.sweep().published == 2


def test_the_recovery_sweep_publishes_nothing_of_a_paused_tool(
    celery: Backends, store: TaskStore
) -> None:
    waiting = queued_task(store, tool_id="noop", backend="celery")
    other = queued_task(store, tool_id="sleep", backend="celery")
    for task in (waiting, other):
        store.mark_undispatched(task.task_id, reason="accepted while the broker was down")
    celery.rollout.pause("noop")

    assert celery.recovery.sweep() == SweepReport(published=1)
    assert celery.handed_over() == [other.task_id]

    celery.rollout.pause("*")
    store.mark_undispatched(other.task_id, reason="the broker lost it")
    assert celery.recovery.sweep() == SweepReport()


def test_a_lost_attempt_of_a_paused_tool_is_queued_again_and_held(
    threads: Backends, store: TaskStore
) -> None:
    task_id = queued_task(store, tool_id="noop").task_id
    assert claim(store, task_id, lease_seconds=-1) is not None
    threads.rollout.pause("noop")

    assert threads.recovery.sweep() == SweepReport(requeued=1)

    row = _get(store, task_id)
    assert (row.status, row.dispatched_at, row.message) == (
        TaskStatus.QUEUED,
        None,
        held_message("noop"),
    )
    assert threads.handed_over() == []
    threads.rollout.pause()
    assert threads.dispatcher.release(tool_id="noop") == 1


def test_celery_tasks_handed_back_during_a_pause_wait_for_the_resume(
    store: TaskStore, registry: ToolRegistry
) -> None:
    backends = Backends(store, registry, percentage=0)  # the stored rollout sends none to celery
    backends.rollout.policy = replace(backends.rollout.policy, version=3)
    task = queued_task(store, tool_id="noop", backend="celery")
    backends.rollout.pause("noop")

    assert backends.recovery.sweep() == SweepReport(handed_back=1)

    assert _get(store, task.task_id).backend == "thread"
    assert backends.handed_over() == []


def test_a_row_written_before_the_pause_is_checked_is_held_by_the_same_method(
    threads: Backends, store: TaskStore
) -> None:
    # A batch writes its rows first; the one "hold or hand over" step then decides each.
    row = queued_task(store, tool_id="noop")
    threads.rollout.pause("noop")

    held = threads.dispatcher._dispatch_new(threads.rollout.current(), threads.thread, row)

    assert (held.status, held.dispatched_at, held.message) == (
        TaskStatus.QUEUED,
        None,
        held_message("noop"),
    )
    assert threads.handed_over() == []


def test_a_task_in_its_retry_backoff_is_not_released_before_it_is_due(
    threads: Backends, store: TaskStore
) -> None:
    threads.rollout.pause("noop")
    task = _submit(threads)
    later = utcnow() + timedelta(minutes=5)
    with store.engine.begin() as conn:
        conn.execute(update(TASKS).where(TASKS.c.task_id == task.task_id).values(run_after=later))
    threads.rollout.pause()

    assert threads.dispatcher.release(tool_id=None) == 0
