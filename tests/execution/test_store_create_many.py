"""TaskStore.create_queued_many: a batch's rows and events, all written or none."""

from __future__ import annotations

import uuid
from dataclasses import asdict

import pytest
from sqlalchemy.exc import IntegrityError

from execution.status import TaskStatus
from execution.store import QueuedTask, TaskFilter, TaskStore


def _task(task_id: str | None = None, **fields: object) -> QueuedTask:
    values: dict[str, object] = {
        "task_id": task_id or str(uuid.uuid4()),
        "user_id": "app",
        "tool_id": "noop",
        "payload": {},
        "priority": 0,
        "backend": "thread",
        "rollout_bucket": 42,
        "rollout_percentage": 0.0,
        **fields,
    }
    return QueuedTask(**values)  # type: ignore[arg-type]


def test_each_task_is_written_as_create_queued_writes_one(store: TaskStore) -> None:
    single = store.create_queued(
        task_id=str(uuid.uuid4()),
        user_id="app",
        tool_id="noop",
        payload={},
        priority=0,
        backend="thread",
        rollout_bucket=42,
        rollout_percentage=0.0,
    )

    (many,) = store.create_queued_many([_task()])

    own = {"task_id", "created_at", "queued_at", "dispatched_at", "updated_at"}
    assert {k: v for k, v in asdict(many).items() if k not in own} == {
        k: v for k, v in asdict(single).items() if k not in own
    }
    assert [(e.seq, e.status, e.message) for e in store.events(many.task_id)] == [
        (1, TaskStatus.CREATED, "created"),
        (2, TaskStatus.QUEUED, "queued"),
    ]
    assert store.get(many.task_id) == many


def test_a_task_that_cannot_be_written_leaves_none_of_its_batch(store: TaskStore) -> None:
    twice = str(uuid.uuid4())

    with pytest.raises(IntegrityError):
        store.create_queued_many([_task(), _task(twice), _task(), _task(twice)])

    assert store.find(TaskFilter(), limit=10, offset=0) == []


def test_a_held_task_is_written_as_never_handed_over(store: TaskStore) -> None:
    (held,) = store.create_queued_many([_task(held="held: dispatch of noop is paused")])

    assert (held.dispatched_at, held.message) == (None, "held: dispatch of noop is paused")
    assert store.events(held.task_id)[-1].message == "held: dispatch of noop is paused"


def test_an_empty_batch_writes_nothing(store: TaskStore) -> None:
    assert store.create_queued_many([]) == []
