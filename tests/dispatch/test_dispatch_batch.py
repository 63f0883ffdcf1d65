"""Dispatcher.submit_many: all or nothing up to one commit, each item routed on its own, then
each handed over as a single submit would be."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from sqlalchemy import Engine, event

from api.settings import Settings
from backends.base import BackendFull, BackendUnavailable, TaskBackend
from backends.celery_app import make_celery_app
from backends.celery_backend import CeleryBackend
from backends.testing import RecordingBackend
from dispatch.dispatcher import REJECTED, BatchInvalid, Dispatcher, NewTask, route_task
from dispatch.rollout.policy import RolloutPolicy
from dispatch.rollout.watch import StaticRollout
from dispatch.settings import BrokerDown
from execution.dispatch_gate import held_message
from execution.records import TaskRecord
from execution.status import TaskStatus
from execution.store import TaskFilter, TaskStore
from execution.tools.registry import ToolRegistry
from tests.conftest import ThreadBackendFactory

HALF = RolloutPolicy(use_celery=True, percentage=50, salt="switchyard")
THREADS = RolloutPolicy(use_celery=False, percentage=0, salt="switchyard")
UNREACHABLE_BROKER = "redis://127.0.0.1:9/0"  # nothing listens on port 9: refused at once


def _dispatcher(
    store: TaskStore,
    registry: ToolRegistry,
    backends: Mapping[str, TaskBackend],
    *,
    policy: RolloutPolicy = HALF,
    broker_down: BrokerDown = BrokerDown.REJECT,
) -> Dispatcher:
    return Dispatcher(
        store=store,
        registry=registry,
        backends=backends,
        rollout=StaticRollout(policy),
        broker_down=broker_down,
    )


def _noops(count: int) -> list[NewTask]:
    return [NewTask(tool_id="noop", payload={}, user_id="app") for _ in range(count)]


def _rows(store: TaskStore) -> list[TaskRecord]:
    return store.find(TaskFilter(), limit=500, offset=0)


@pytest.fixture
def unreachable_celery(registry: ToolRegistry) -> Iterator[CeleryBackend]:
    """The real Celery backend, publishing to a broker that refuses every connection."""
    app = make_celery_app(Settings(_env_file=None, redis_url=UNREACHABLE_BROKER), registry)
    yield CeleryBackend(app=app, registry=registry, publish_retries=0)
    app.close()


def test_every_item_is_routed_on_its_own_and_lands_on_its_backend(
    store: TaskStore, registry: ToolRegistry
) -> None:
    thread, celery = RecordingBackend(name="thread"), RecordingBackend(name="celery")
    dispatcher = _dispatcher(store, registry, {"thread": thread, "celery": celery})

    created = dispatcher.submit_many(_noops(40))

    assert [r.status for r in created] == [TaskStatus.QUEUED] * 40
    for record in created:
        decision = route_task(HALF, user_id="app", task_id=record.task_id, tool_id="noop")
        assert (record.backend, record.rollout_bucket) == (decision.backend, decision.bucket)
    assert thread.submitted
    assert celery.submitted
    handed = {t.task_id: t.backend for t in thread.submitted + celery.submitted}
    assert handed == {r.task_id: r.backend for r in created}


def test_the_tasks_come_back_in_item_order_with_their_own_payload_and_priority(
    store: TaskStore, registry: ToolRegistry
) -> None:
    requests = [
        NewTask(tool_id="sleep", payload={"seconds": 0}, user_id="app", priority=3),
        NewTask(tool_id="echo", payload={"n": 1}, user_id="app"),
        NewTask(tool_id="urgent", payload={}, user_id="app"),
    ]
    threads = {"thread": RecordingBackend(name="thread")}
    dispatcher = _dispatcher(store, registry, threads, policy=THREADS)

    created = dispatcher.submit_many(requests)

    assert [(r.tool_id, r.priority) for r in created] == [("sleep", 3), ("echo", 0), ("urgent", 7)]
    assert created[0].payload == {"seconds": 0, "steps": 10}  # validated as POST /tasks does
    for record in created:
        assert [e.status for e in store.events(record.task_id)] == ["CREATED", "QUEUED"]


def test_bad_items_reject_the_whole_batch_by_index_and_nothing_is_created(
    store: TaskStore, registry: ToolRegistry
) -> None:
    requests = [
        *_noops(2),
        NewTask(tool_id="no-such-tool", payload={}, user_id="app"),
        NewTask(tool_id="sleep", payload={"seconds": -1}, user_id="app"),
        NewTask(tool_id="noop", payload={}, user_id="app", priority=12),
    ]
    thread = RecordingBackend(name="thread")

    with pytest.raises(BatchInvalid) as caught:
        _dispatcher(store, registry, {"thread": thread}).submit_many(requests)

    problems = [(p.index, p.field) for p in caught.value.problems]
    assert problems == [(2, "tool_id"), (3, "payload"), (4, "priority")]
    assert "item 2: unknown tool 'no-such-tool'" in str(caught.value)
    assert _rows(store) == []
    assert thread.submitted == []


def test_all_rows_and_their_events_are_written_in_one_commit(
    store: TaskStore, registry: ToolRegistry, engine: Engine
) -> None:
    # Counted at the driver: the store's writes go to the DB-API connection directly.
    commits: list[str] = []

    def count_commits(dbapi_connection: Any, *_: Any) -> None:
        dbapi_connection.set_trace_callback(
            lambda sql: commits.append(sql) if sql == "COMMIT" else None
        )

    event.listen(engine.pool, "checkout", count_commits)
    threads = {"thread": RecordingBackend(name="thread")}
    dispatcher = _dispatcher(store, registry, threads, policy=THREADS)

    created = dispatcher.submit_many(_noops(25))

    assert len(commits) == 1
    assert len(_rows(store)) == 25
    assert all(len(store.events(r.task_id)) == 2 for r in created)


def test_a_thread_pool_that_cannot_take_its_share_refuses_the_batch_before_any_row(
    store: TaskStore, registry: ToolRegistry, thread_backends: ThreadBackendFactory
) -> None:
    pool = thread_backends(workers=1, capacity=3)
    dispatcher = _dispatcher(store, registry, {"thread": pool}, policy=THREADS)

    with pytest.raises(BackendFull, match="cannot take 4 more tasks"):
        dispatcher.submit_many(_noops(4))
    assert _rows(store) == []

    assert len(dispatcher.submit_many(_noops(3))) == 3  # its whole share fits


def test_a_broker_that_just_failed_refuses_the_batch_before_any_row_under_reject(
    store: TaskStore, registry: ToolRegistry, unreachable_celery: CeleryBackend
) -> None:
    everything = RolloutPolicy(use_celery=True, percentage=100, salt="s")
    dispatcher = _dispatcher(store, registry, {"celery": unreachable_celery}, policy=everything)
    with pytest.raises(BackendUnavailable):  # a single submit meets the dead broker first
        dispatcher.submit(NewTask(tool_id="noop", payload={}, user_id="app"))

    with pytest.raises(BackendUnavailable, match="failed moments ago") as caught:
        dispatcher.submit_many(_noops(5))

    assert caught.value.retry_after >= 1
    assert len(_rows(store)) == 1  # the single submit's REJECTED row, nothing of the batch


def test_a_broker_that_dies_mid_batch_rejects_its_items_and_leaves_the_others_queued(
    store: TaskStore, registry: ToolRegistry, unreachable_celery: CeleryBackend
) -> None:
    thread = RecordingBackend(name="thread")
    dispatcher = _dispatcher(store, registry, {"thread": thread, "celery": unreachable_celery})

    created = dispatcher.submit_many(_noops(20))

    on_celery = [r for r in created if r.backend == "celery"]
    on_threads = [r for r in created if r.backend == "thread"]
    assert on_celery
    assert on_threads
    for record in on_celery:
        assert (record.status, record.error_code) == (TaskStatus.CANCELLED, REJECTED)
        assert record.message is not None
        assert "not accepted: celery broker unreachable" in record.message
    assert {r.status for r in on_threads} == {TaskStatus.QUEUED}
    assert sorted(t.task_id for t in thread.submitted) == sorted(r.task_id for r in on_threads)
    assert {r.task_id: r.status for r in _rows(store)} == {r.task_id: r.status for r in created}


def test_under_accept_the_items_of_a_dead_broker_are_kept_for_recovery_to_publish(
    store: TaskStore, registry: ToolRegistry, unreachable_celery: CeleryBackend
) -> None:
    dispatcher = _dispatcher(
        store,
        registry,
        {"thread": RecordingBackend(name="thread"), "celery": unreachable_celery},
        broker_down=BrokerDown.ACCEPT,
    )

    created = dispatcher.submit_many(_noops(20))

    on_celery = [r for r in created if r.backend == "celery"]
    assert on_celery
    assert {(r.status, r.dispatched_at) for r in on_celery} == {(TaskStatus.QUEUED, None)}


def test_a_batch_routed_to_a_backend_this_process_does_not_run_is_refused_whole(
    store: TaskStore, registry: ToolRegistry
) -> None:
    dispatcher = _dispatcher(store, registry, {"thread": RecordingBackend(name="thread")})

    with pytest.raises(BackendUnavailable, match="celery backend, which this process does not"):
        dispatcher.submit_many(_noops(20))
    assert _rows(store) == []


def test_items_of_a_paused_tool_are_held_and_take_no_place_in_the_pool(
    store: TaskStore, registry: ToolRegistry, thread_backends: ThreadBackendFactory
) -> None:
    pool = thread_backends(workers=1, capacity=1)
    paused = RolloutPolicy(use_celery=False, percentage=0, salt="s", paused=frozenset({"noop"}))
    dispatcher = _dispatcher(store, registry, {"thread": pool}, policy=paused)
    requests = [*_noops(3), NewTask(tool_id="echo", payload={}, user_id="app")]

    created = dispatcher.submit_many(requests)

    assert [(r.tool_id, r.status, r.dispatched_at is None) for r in created] == [
        ("noop", TaskStatus.QUEUED, True),
        ("noop", TaskStatus.QUEUED, True),
        ("noop", TaskStatus.QUEUED, True),
        ("echo", TaskStatus.QUEUED, False),
    ]
    assert {r.message for r in created[:3]} == {held_message("noop")}
