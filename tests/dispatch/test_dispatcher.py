"""The dispatcher: validate, route, record the decision, commit, and only then hand over."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from sqlalchemy import Engine

from backends.base import BackendFull, BackendUnavailable, TaskBackend
from backends.testing import InlineBackend, RecordingBackend
from dispatch.dispatcher import Dispatcher, NewTask, TaskRejected
from dispatch.rollout.policy import RolloutPolicy, bucket
from dispatch.rollout.watch import StaticRollout
from dispatch.settings import BrokerDown
from execution.database import make_engine
from execution.executor import TaskExecutor
from execution.records import TaskRecord
from execution.status import TaskStatus
from execution.store import TaskFilter, TaskStore
from execution.tools.registry import InvalidPayload, ToolRegistry, UnknownTool

SALT = "switchyard"


def _dispatcher(
    store: TaskStore,
    registry: ToolRegistry,
    backends: Mapping[str, TaskBackend],
    *,
    use_celery: bool = False,
    percentage: float = 0,
) -> Dispatcher:
    policy = RolloutPolicy(use_celery=use_celery, percentage=percentage, salt=SALT)
    return Dispatcher(
        store=store, registry=registry, backends=backends, rollout=StaticRollout(policy)
    )


def _all_rows(store: TaskStore) -> list[TaskRecord]:
    return store.find(TaskFilter(), limit=100, offset=0)


class CommitCheckingBackend(RecordingBackend):
    """Reads each task's row through its own connection at the moment it is handed over."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(name="thread")
        self._observer = TaskStore(engine)
        self.seen: list[TaskStatus | None] = []

    def enqueue(self, task: TaskRecord) -> None:
        row = self._observer.get(task.task_id)
        self.seen.append(row.status if row else None)
        super().enqueue(task)


class FullBackend(RecordingBackend):
    """A backend whose queue is at capacity."""

    def check_capacity(self, tasks: int = 1) -> None:
        raise BackendFull("full", retry_after=2)


def test_a_thread_task_is_queued_with_its_routing_decision(
    store: TaskStore, registry: ToolRegistry
) -> None:
    thread = RecordingBackend(name="thread")

    queued = _dispatcher(store, registry, {"thread": thread}).submit(
        NewTask(tool_id="noop", payload={}, user_id="ann")
    )

    assert queued.status is TaskStatus.QUEUED
    assert queued.backend == "thread"
    assert queued.rollout_bucket == bucket(queued.task_id, salt=SALT)
    assert queued.rollout_percentage == 0.0
    assert queued.user_id == "ann"
    assert store.get(queued.task_id) == queued
    assert thread.submitted == [queued]


def test_a_celery_task_records_the_percentage_it_was_routed_at(
    store: TaskStore, registry: ToolRegistry
) -> None:
    thread, celery = RecordingBackend(name="thread"), RecordingBackend(name="celery")
    dispatcher = _dispatcher(
        store, registry, {"thread": thread, "celery": celery}, use_celery=True, percentage=100
    )

    queued = dispatcher.submit(NewTask(tool_id="noop", payload={}, user_id="ann"))

    assert (queued.backend, queued.rollout_percentage) == ("celery", 100.0)
    assert queued.rollout_bucket == bucket(queued.task_id, salt=SALT)
    assert celery.submitted == [queued]
    assert thread.submitted == []


def test_the_row_is_committed_as_queued_before_the_backend_sees_the_task(
    engine: Engine, database_url: str, store: TaskStore, registry: ToolRegistry
) -> None:
    observer_engine = make_engine(database_url)
    try:
        backend = CommitCheckingBackend(observer_engine)
        _dispatcher(store, registry, {"thread": backend}).submit(
            NewTask(tool_id="noop", payload={}, user_id="ann")
        )
    finally:
        observer_engine.dispose()

    assert backend.seen == [TaskStatus.QUEUED]


def test_a_task_routed_to_an_absent_celery_backend_is_refused_and_never_stored(
    store: TaskStore, registry: ToolRegistry
) -> None:
    thread = RecordingBackend(name="thread")
    dispatcher = _dispatcher(store, registry, {"thread": thread}, use_celery=True, percentage=100)

    with pytest.raises(BackendUnavailable, match="celery backend") as raised:
        dispatcher.submit(NewTask(tool_id="noop", payload={}, user_id="ann"))

    assert not isinstance(raised.value, TaskRejected)
    assert thread.submitted == []
    assert _all_rows(store) == []


def test_a_backend_that_refuses_leaves_the_row_cancelled_as_rejected(
    store: TaskStore, registry: ToolRegistry
) -> None:
    refusing = RecordingBackend(name="thread", unavailable="broker unreachable")

    with pytest.raises(TaskRejected) as raised:
        _dispatcher(store, registry, {"thread": refusing}).submit(
            NewTask(tool_id="noop", payload={}, user_id="ann")
        )

    row = store.get(raised.value.task_id)
    assert row is not None
    assert row.status is TaskStatus.CANCELLED
    assert row.error_code == "REJECTED"
    assert "broker unreachable" in (row.error_message or "")
    assert [e.status for e in store.events(row.task_id)] == [
        TaskStatus.CREATED,
        TaskStatus.QUEUED,
        TaskStatus.CANCELLED,
    ]


def test_a_full_backend_refuses_before_any_row_is_written(
    store: TaskStore, registry: ToolRegistry
) -> None:
    with pytest.raises(BackendFull):
        _dispatcher(store, registry, {"thread": FullBackend(name="thread")}).submit(
            NewTask(tool_id="noop", payload={}, user_id="ann")
        )

    assert _all_rows(store) == []


def test_an_unknown_tool_or_bad_payload_writes_nothing(
    store: TaskStore, registry: ToolRegistry
) -> None:
    dispatcher = _dispatcher(store, registry, {"thread": RecordingBackend(name="thread")})

    with pytest.raises(UnknownTool):
        dispatcher.submit(NewTask(tool_id="nope", payload={}, user_id="ann"))
    with pytest.raises(InvalidPayload):
        dispatcher.submit(NewTask(tool_id="sleep", payload={"seconds": "soon"}, user_id="ann"))
    with pytest.raises(ValueError, match="priority 10"):
        dispatcher.submit(NewTask(tool_id="noop", payload={}, user_id="ann", priority=10))

    assert _all_rows(store) == []


def test_the_priority_defaults_to_the_tools_own(store: TaskStore, registry: ToolRegistry) -> None:
    dispatcher = _dispatcher(store, registry, {"thread": RecordingBackend(name="thread")})

    default = dispatcher.submit(NewTask(tool_id="urgent", payload={}, user_id="ann"))
    given = dispatcher.submit(NewTask(tool_id="urgent", payload={}, user_id="ann", priority=2))

    assert (default.priority, given.priority) == (7, 2)


def test_the_stored_payload_is_the_validated_one(store: TaskStore, registry: ToolRegistry) -> None:
    dispatcher = _dispatcher(store, registry, {"thread": RecordingBackend(name="thread")})

    queued = dispatcher.submit(NewTask(tool_id="sleep", payload={"seconds": 2}, user_id="ann"))

    assert queued.payload == {"seconds": 2.0, "steps": 10}


def test_with_an_inline_backend_the_task_has_ended_when_submit_returns(
    store: TaskStore, registry: ToolRegistry, executor: TaskExecutor
) -> None:
    dispatcher = _dispatcher(store, registry, {"thread": InlineBackend(executor)})

    queued = dispatcher.submit(NewTask(tool_id="echo", payload={"n": 1}, user_id="ann"))

    done = store.get(queued.task_id)
    assert done is not None
    assert done.status is TaskStatus.COMPLETED
    assert done.result == {"task_id": queued.task_id, "attempt": 1, "payload": {"n": 1}}


def _broker_down(
    store: TaskStore, registry: ToolRegistry, mode: BrokerDown
) -> tuple[Dispatcher, RecordingBackend]:
    threads = RecordingBackend(name="thread")
    celery = RecordingBackend(name="celery", unavailable="broker unreachable")
    policy = RolloutPolicy(use_celery=True, percentage=100, salt=SALT)
    dispatcher = Dispatcher(
        store=store,
        registry=registry,
        backends={"thread": threads, "celery": celery},
        rollout=StaticRollout(policy),
        broker_down=mode,
    )
    return dispatcher, threads


def test_with_the_broker_down_accept_keeps_the_task_queued_for_recovery_to_publish(
    store: TaskStore, registry: ToolRegistry
) -> None:
    dispatcher, threads = _broker_down(store, registry, BrokerDown.ACCEPT)

    record = dispatcher.submit(NewTask(tool_id="noop", payload={}, user_id="u"))

    assert (record.status, record.backend, record.dispatched_at) == (
        TaskStatus.QUEUED,
        "celery",
        None,
    )
    assert store.get(record.task_id) == record
    assert threads.submitted == []
    assert [
        t.task_id for t in store.awaiting_dispatch(backend="celery", republish_after=300, limit=10)
    ] == [record.task_id]


def test_with_the_broker_down_threads_runs_the_task_on_threads_and_says_why(
    store: TaskStore, registry: ToolRegistry
) -> None:
    dispatcher, threads = _broker_down(store, registry, BrokerDown.THREADS)

    record = dispatcher.submit(NewTask(tool_id="noop", payload={}, user_id="u"))

    assert (record.status, record.backend) == (TaskStatus.QUEUED, "thread")
    assert [t.task_id for t in threads.submitted] == [record.task_id]
    assert record.message == "moved from celery to thread: broker down: broker unreachable"


def test_with_the_broker_down_reject_is_today_s_503_and_a_cancelled_row(
    store: TaskStore, registry: ToolRegistry
) -> None:
    dispatcher, _ = _broker_down(store, registry, BrokerDown.REJECT)

    with pytest.raises(TaskRejected) as refused:
        dispatcher.submit(NewTask(tool_id="noop", payload={}, user_id="u"))

    record = store.get(refused.value.task_id)
    assert record is not None
    assert (record.status, record.error_code) == (TaskStatus.CANCELLED, "REJECTED")


def test_sending_the_key_of_a_refused_task_again_dispatches_that_task_again(
    store: TaskStore, registry: ToolRegistry
) -> None:
    dispatcher, _ = _broker_down(store, registry, BrokerDown.REJECT)
    request = NewTask(tool_id="noop", payload={}, user_id="u", idempotency_key="k-1")
    with pytest.raises(TaskRejected) as refused:
        dispatcher.submit(request)
    celery = dispatcher.backends["celery"]
    assert isinstance(celery, RecordingBackend)
    celery.unavailable = None

    record, replayed = dispatcher.submit_once(request)

    assert replayed
    assert (record.task_id, record.status, record.backend) == (
        refused.value.task_id,
        TaskStatus.QUEUED,
        "celery",
    )
    assert [t.task_id for t in celery.submitted] == [record.task_id]
