"""The status store: one row write and one event per transition, or nothing at all."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, timedelta

import pytest

from execution.records import TaskRecord
from execution.status import TaskStatus
from execution.store import TaskFilter, TaskStore
from tests.helpers import claim, queued_task


def _in_status(store: TaskStore, status: TaskStatus) -> TaskRecord:
    """A task walked through the store's own transitions to `status`."""
    record = queued_task(store)
    moves: dict[TaskStatus, Callable[[str], TaskRecord | None]] = {
        TaskStatus.QUEUED: store.get,
        TaskStatus.PROCESSING: lambda task_id: claim(store, task_id),
        TaskStatus.CANCELLED: lambda task_id: store.cancel(task_id, reason="test"),
    }
    if status in moves:
        moved = moves[status](record.task_id)
    else:
        assert claim(store, record.task_id) is not None
        if status is TaskStatus.COMPLETED:
            assert store.complete(record.task_id, attempt=1, result={"ok": True})
            moved = store.get(record.task_id)
        else:
            moved = store.fail(record.task_id, attempt=1, error_code="E", error_message="m")
    assert moved is not None
    assert moved.status is status
    return moved


def test_a_routed_task_is_written_queued_with_created_and_queued_in_its_history(
    store: TaskStore,
) -> None:
    record = store.create_queued(
        task_id=str(uuid.uuid4()),
        user_id="tester",
        tool_id="echo",
        payload={"n": 1},
        priority=3,
        backend="celery",
        rollout_bucket=42,
        rollout_percentage=12.5,
        celery_task_id="c-1",
    )

    assert record.status is TaskStatus.QUEUED
    assert (record.tool_id, record.payload, record.priority) == ("echo", {"n": 1}, 3)
    assert (record.backend, record.celery_task_id) == ("celery", "c-1")
    assert (record.rollout_bucket, record.rollout_percentage) == (42, 12.5)
    assert record.attempts == 0
    assert record.queued_at == record.created_at == record.updated_at
    assert store.get(record.task_id) == record  # what it returns is what a read gives back
    assert [(e.seq, e.status, e.progress, e.message) for e in store.events(record.task_id)] == [
        (1, TaskStatus.CREATED, 0, "created"),
        (2, TaskStatus.QUEUED, 0, "queued"),
    ]


def test_every_transition_writes_the_row_and_exactly_one_event(store: TaskStore) -> None:
    task_id = queued_task(store).task_id

    def report_progress() -> TaskRecord | None:
        moved = store.record_progress(task_id, attempt=1, progress=40, message="m")
        return store.get(task_id) if moved else None

    steps: list[Callable[[], TaskRecord | None]] = [
        lambda: claim(store, task_id),
        report_progress,
        lambda: (
            store.get(task_id) if store.complete(task_id, attempt=1, result={"rows": 3}) else None
        ),
    ]

    for step in steps:
        before = len(store.events(task_id))
        record = step()

        assert record is not None
        assert store.get(task_id) == record
        events = store.events(task_id)
        assert len(events) == before + 1
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert (events[-1].status, events[-1].progress) == (record.status, record.progress)
        assert events[-1].message == record.message

    final = store.get(task_id)
    assert final is not None
    assert final.status is TaskStatus.COMPLETED
    assert (final.result, final.progress, final.attempts) == ({"rows": 3}, 100, 1)
    assert final.queued_at is not None
    assert final.processing_started_at is not None
    assert final.completed_at is not None
    assert [e.status for e in store.events(task_id)] == [
        TaskStatus.CREATED,
        TaskStatus.QUEUED,
        TaskStatus.PROCESSING,
        TaskStatus.PROCESSING,
        TaskStatus.COMPLETED,
    ]


def test_fail_records_the_reason(store: TaskStore) -> None:
    task_id = _in_status(store, TaskStatus.PROCESSING).task_id

    record = store.fail(task_id, attempt=1, error_code="ValueError", error_message="bad row 7")

    assert record is not None
    assert record.status is TaskStatus.FAILED
    assert (record.error_code, record.error_message) == ("ValueError", "bad row 7")
    assert record.failed_at is not None
    assert record.completed_at is None


def test_cancel_by_a_backend_records_why(store: TaskStore) -> None:
    task_id = queued_task(store).task_id

    record = store.cancel(task_id, reason="queue full", error_code="REJECTED")

    assert record is not None
    assert record.status is TaskStatus.CANCELLED
    assert (record.error_code, record.error_message) == ("REJECTED", "queue full")


Transition = Callable[[TaskStore, str], object]

TRANSITIONS: dict[str, Transition] = {
    "claim": lambda s, t: claim(s, t),
    "record_progress": lambda s, t: s.record_progress(t, attempt=1, progress=50, message="half"),
    "complete": lambda s, t: s.get(t) if s.complete(t, attempt=1, result={}) else None,
    "fail": lambda s, t: s.fail(t, attempt=1, error_code="E", error_message="m"),
    "cancel": lambda s, t: s.cancel(t, reason="no"),
}

LEGAL_FROM: dict[str, set[TaskStatus]] = {
    "claim": {TaskStatus.QUEUED},
    "record_progress": {TaskStatus.PROCESSING},
    "complete": {TaskStatus.PROCESSING},
    "fail": {TaskStatus.PROCESSING},
    "cancel": {TaskStatus.QUEUED},
}

ILLEGAL = [
    (name, status)
    for name in TRANSITIONS
    for status in TaskStatus
    if status not in LEGAL_FROM[name] and status is not TaskStatus.CREATED  # never a row's
]


@pytest.mark.parametrize(("transition", "status"), ILLEGAL)
def test_a_transition_that_does_not_apply_changes_nothing(
    store: TaskStore, transition: str, status: TaskStatus
) -> None:
    record = _in_status(store, status)
    history = store.events(record.task_id)

    assert TRANSITIONS[transition](store, record.task_id) is None

    assert store.get(record.task_id) == record
    assert store.events(record.task_id) == history


@pytest.mark.parametrize("transition", TRANSITIONS)
def test_a_transition_of_an_unknown_task_changes_nothing(store: TaskStore, transition: str) -> None:
    assert TRANSITIONS[transition](store, str(uuid.uuid4())) is None
    assert store.find(TaskFilter(), limit=10, offset=0) == []


def test_only_the_first_of_two_claims_succeeds(store: TaskStore) -> None:
    task_id = queued_task(store).task_id

    first = claim(store, task_id)
    second = claim(store, task_id)

    assert first is not None
    assert first.attempts == 1
    assert second is None
    assert [e.status for e in store.events(task_id)].count(TaskStatus.PROCESSING) == 1


def test_claims_raced_from_many_threads_have_one_winner(store: TaskStore) -> None:
    task_id = queued_task(store).task_id
    contenders = 8
    start = threading.Barrier(contenders)
    results: list[TaskRecord | None] = []

    def contend() -> None:
        start.wait()
        results.append(claim(store, task_id))

    threads = [threading.Thread(target=contend) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    winners = [r for r in results if r is not None]
    assert len(results) == contenders
    assert len(winners) == 1
    record = store.get(task_id)
    assert record is not None
    assert (record.status, record.attempts) == (TaskStatus.PROCESSING, 1)
    assert [e.status for e in store.events(task_id)].count(TaskStatus.PROCESSING) == 1


def test_times_come_back_timezone_aware_utc(store: TaskStore) -> None:
    task_id = _in_status(store, TaskStatus.COMPLETED).task_id

    record = store.get(task_id)
    assert record is not None
    stamps = [
        record.created_at,
        record.queued_at,
        record.processing_started_at,
        record.completed_at,
        record.updated_at,
        *(e.at for e in store.events(task_id)),
    ]
    for stamp in stamps:
        assert stamp is not None
        assert stamp.tzinfo is UTC
        assert stamp.utcoffset() == timedelta(0)
    assert record.updated_at == record.completed_at


def test_find_filters_and_pages_newest_first(store: TaskStore) -> None:
    noop_a = queued_task(store, tool_id="noop")
    echo = queued_task(store, tool_id="echo", backend="celery")
    noop_b = queued_task(store, tool_id="noop")
    assert claim(store, noop_b.task_id) is not None

    def ids(where: TaskFilter, limit: int = 10, offset: int = 0) -> list[str]:
        return [r.task_id for r in store.find(where, limit=limit, offset=offset)]

    assert ids(TaskFilter()) == [noop_b.task_id, echo.task_id, noop_a.task_id]
    assert ids(TaskFilter(tool_id="noop")) == [noop_b.task_id, noop_a.task_id]
    assert ids(TaskFilter(status=TaskStatus.PROCESSING)) == [noop_b.task_id]
    assert ids(TaskFilter(backend="celery")) == [echo.task_id]
    assert ids(TaskFilter(user_id="someone-else")) == []
    assert ids(TaskFilter(), limit=1, offset=1) == [echo.task_id]


def test_queued_lists_only_queued_tasks_of_the_backend(store: TaskStore) -> None:
    low = queued_task(store, priority=1)
    high = queued_task(store, priority=8)
    queued_task(store, backend="celery")
    assert claim(store, queued_task(store).task_id) is not None
    assert store.cancel(queued_task(store).task_id, reason="test") is not None

    assert store.queued(backend="thread") == [(low.task_id, 1), (high.task_id, 8)]
