"""A rollback moves the tasks still QUEUED on Celery to threads from the API side, in the same
call: nothing waits for a worker, and a Celery message arriving later runs nothing."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from sqlalchemy import Engine

from backends.celery_tasks import WorkerServices
from backends.testing import InlineBackend, RecordingBackend
from dispatch.dispatcher import Dispatcher, NewTask
from dispatch.recovery import Recovery
from dispatch.rollout.control import RolloutChange, RolloutControl
from dispatch.rollout.policy import RolloutPolicy
from dispatch.rollout.state import RolloutAction
from dispatch.rollout.store import RolloutStore
from dispatch.rollout.watch import RolloutWatcher, StaticRollout
from execution.executor import RunOutcome, TaskExecutor
from execution.status import BackendName, TaskStatus
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry
from tests.helpers import queued_task


@pytest.fixture
def watcher(engine: Engine) -> Iterator[RolloutWatcher]:
    """Every task to Celery to begin with."""
    watcher = RolloutWatcher(
        RolloutStore(engine), use_celery=True, seed_percentage=100, salt="s", interval=5
    )
    watcher.start()
    yield watcher
    watcher.stop()


@pytest.fixture
def celery() -> RecordingBackend:
    """A Celery backend with no worker: what it is given waits."""
    return RecordingBackend(name="celery")


@pytest.fixture
def dispatcher(
    store: TaskStore,
    registry: ToolRegistry,
    executor: TaskExecutor,
    watcher: RolloutWatcher,
    celery: RecordingBackend,
) -> Dispatcher:
    """Threads run inline; Celery only records."""
    return Dispatcher(
        store=store,
        registry=registry,
        backends={"thread": InlineBackend(executor), "celery": celery},
        rollout=watcher,
    )


@pytest.fixture
def control(
    watcher: RolloutWatcher, registry: ToolRegistry, store: TaskStore, dispatcher: Dispatcher
) -> RolloutControl:
    """The control, reclaiming through the dispatcher as the API wires it."""
    return RolloutControl(watcher=watcher, registry=registry, tasks=store, reclaimer=dispatcher)


def submit(dispatcher: Dispatcher, tool_id: str, count: int) -> list[str]:
    payload = {"seconds": 0, "steps": 1} if tool_id == "sleep" else {}
    return [
        dispatcher.submit(NewTask(tool_id=tool_id, payload=payload, user_id="ann")).task_id
        for _ in range(count)
    ]


def test_a_rollback_runs_the_tasks_waiting_on_celery_on_threads_at_once(
    dispatcher: Dispatcher, control: RolloutControl, store: TaskStore
) -> None:
    waiting = submit(dispatcher, "noop", 5)
    assert {store.get(t).status for t in waiting} == {TaskStatus.QUEUED}  # type: ignore[union-attr]

    outcome = control.rollback(actor="oncall", reason="workers down")

    assert outcome.reclaimed == 5
    for task_id in waiting:
        row = store.get(task_id)
        assert row is not None
        assert (row.status, row.backend, row.attempts) == (
            TaskStatus.COMPLETED,
            BackendName.THREAD,
            1,
        )
        messages = [e.message or "" for e in store.events(task_id)]
        assert any("moved from celery to thread: rollback by oncall" in m for m in messages)


def test_a_celery_message_arriving_after_the_reclaim_runs_nothing(
    dispatcher: Dispatcher,
    control: RolloutControl,
    store: TaskStore,
    executor: TaskExecutor,
    watcher: RolloutWatcher,
) -> None:
    (task_id,) = submit(dispatcher, "noop", 1)
    control.rollback(actor="oncall", reason="drill")
    control.restore(actor="oncall", reason="over")  # the worker would now run Celery tasks
    worker = WorkerServices(executor=executor, hand_back_to=lambda tool_id: None)

    assert worker.run(task_id, "noop") == RunOutcome.NOT_CLAIMED.value
    row = store.get(task_id)
    assert row is not None
    assert (row.status, row.backend, row.attempts) == (TaskStatus.COMPLETED, "thread", 1)


def test_a_claim_for_another_backend_takes_nothing(
    store: TaskStore, executor: TaskExecutor
) -> None:
    task = queued_task(store, backend="thread")
    assert executor.run(task.task_id, recorded_for="celery") is RunOutcome.NOT_CLAIMED
    row = store.get(task.task_id)
    assert row is not None
    assert (row.status, row.attempts) == (TaskStatus.QUEUED, 0)
    assert executor.run(task.task_id, recorded_for="thread") is RunOutcome.COMPLETED


def test_a_rollback_of_one_tool_moves_only_that_tools_tasks(
    dispatcher: Dispatcher, control: RolloutControl, store: TaskStore, watcher: RolloutWatcher
) -> None:
    noops = submit(dispatcher, "noop", 3)
    sleeps = submit(dispatcher, "sleep", 2)

    outcome = control.rollback(actor="oncall", reason="sleep misbehaves", tool_id="sleep")

    assert outcome.reclaimed == 2
    assert dict(outcome.state.tool_overrides) == {"sleep": 0}
    assert outcome.state.percentage == 100
    assert watcher.current().share_for("sleep") == 0
    assert {store.get(t).backend for t in sleeps} == {"thread"}  # type: ignore[union-attr]
    assert {store.get(t).status for t in noops} == {TaskStatus.QUEUED}  # type: ignore[union-attr]
    assert {store.get(t).backend for t in noops} == {"celery"}  # type: ignore[union-attr]


def test_restore_after_a_tool_then_a_global_rollback_returns_to_before_the_first(
    control: RolloutControl,
) -> None:
    control.set(
        RolloutChange(percentage=50, tool_overrides={"noop": 80}),
        actor="ops",
        reason="step",
        expected_version=None,
    )
    control.rollback(actor="oncall", reason="noop first", tool_id="noop")
    control.rollback(actor="oncall", reason="then everything")
    restored = control.restore(actor="oncall", reason="over")
    assert (restored.percentage, dict(restored.tool_overrides)) == (50, {"noop": 80})


def test_tasks_already_running_or_on_threads_are_not_touched(
    dispatcher: Dispatcher, control: RolloutControl, store: TaskStore
) -> None:
    on_threads = queued_task(store, backend="thread")
    running = queued_task(store, backend="celery")
    store.claim(running.task_id, owner="worker:1", lease_seconds=30)

    assert control.rollback(actor="oncall", reason="r").reclaimed == 0
    assert store.get(running.task_id).status is TaskStatus.PROCESSING  # type: ignore[union-attr]
    assert store.get(on_threads.task_id).backend == "thread"  # type: ignore[union-attr]


def sweeper(
    store: TaskStore, registry: ToolRegistry, policy: RolloutPolicy, threads: RecordingBackend
) -> Recovery:
    return Recovery(
        store=store,
        registry=registry,
        backends={"thread": threads},
        rollout=StaticRollout(policy),
        lost_retries=2,
        republish_after=300,
        interval=60,
    )


def test_the_sweep_hands_back_celery_tasks_the_stored_rollout_no_longer_sends_there(
    store: TaskStore, registry: ToolRegistry
) -> None:
    """A process that routed to Celery just before it heard of a rollback made elsewhere:
    any process's sweep moves those tasks to threads, no worker needed."""
    late = [queued_task(store, tool_id="noop", backend="celery") for _ in range(3)]
    kept = queued_task(store, tool_id="sleep", backend="celery")
    threads = RecordingBackend(name="thread")
    rolled_back_noop = RolloutPolicy(
        use_celery=True, percentage=50, salt="s", tool_overrides={"noop": 0}, version=7
    )

    report = sweeper(store, registry, rolled_back_noop, threads).sweep()

    assert report.handed_back == 3
    assert {store.get(t.task_id).backend for t in late} == {"thread"}  # type: ignore[union-attr]
    assert sorted(t.task_id for t in threads.submitted) == sorted(t.task_id for t in late)
    assert store.get(kept.task_id).backend == "celery"  # type: ignore[union-attr]
    message = store.get(late[0].task_id).message  # type: ignore[union-attr]
    assert message == (
        "moved from celery to thread: the rollout (version 7) sends no noop task to celery"
    )


def test_an_api_process_switched_off_does_not_take_celery_tasks(
    store: TaskStore, registry: ToolRegistry
) -> None:
    """USE_CELERY=false is this process's switch for new tasks, not the stored routing."""
    waiting = queued_task(store, tool_id="noop", backend="celery")
    switched_off = RolloutPolicy(use_celery=False, percentage=100, salt="s", version=4)

    report = sweeper(store, registry, switched_off, RecordingBackend(name="thread")).sweep()

    assert report.handed_back == 0
    assert store.get(waiting.task_id).backend == "celery"  # type: ignore[union-attr]


def test_before_any_stored_rollout_is_read_nothing_is_handed_back(
    store: TaskStore, registry: ToolRegistry
) -> None:
    waiting = queued_task(store, tool_id="noop", backend="celery")
    unread = RolloutPolicy(use_celery=True, percentage=0, salt="s")  # version 0
    assert (
        sweeper(store, registry, unread, RecordingBackend(name="thread")).sweep().handed_back == 0
    )
    assert store.get(waiting.task_id).backend == "celery"  # type: ignore[union-attr]


def test_a_change_made_elsewhere_wakes_the_listeners_and_one_made_here_does_not(
    engine: Engine, control: RolloutControl, watcher: RolloutWatcher
) -> None:
    heard: list[int] = []
    watcher.subscribe(lambda state: heard.append(state.version))
    control.rollback(actor="here", reason="r")  # adopted at once, and reclaimed here
    elsewhere = RolloutStore(engine)
    changed = elsewhere.change(
        lambda s: (replace(s, percentage=30.0), None),
        action=RolloutAction.SET,
        actor="another process",
        reason="r",
        expected_version=None,
    )
    watcher.refresh()
    watcher.refresh()
    assert heard == [changed.version]
