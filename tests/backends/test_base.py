"""The backend interface: an ABC that is enforced, and one shared check before every hand-over."""

from __future__ import annotations

import dataclasses

import pytest

from backends.base import BackendHealth, TaskBackend
from backends.testing import RecordingBackend
from execution.status import TaskStatus
from execution.store import TaskStore
from tests.helpers import queued_task


def test_a_backend_that_forgets_enqueue_cannot_be_built() -> None:
    class Forgetful(TaskBackend):
        name = "forgetful"

    with pytest.raises(TypeError, match="enqueue"):
        Forgetful()  # type: ignore[abstract]


def test_a_backend_with_enqueue_gets_the_documented_defaults() -> None:
    backend = RecordingBackend(name="thread")

    assert backend.external_id("any") is None
    assert backend.health() == BackendHealth(ok=True)
    backend.check_capacity()
    backend.start()
    backend.shutdown(timeout=0)


def test_only_a_queued_task_can_be_submitted(store: TaskStore) -> None:
    task = queued_task(store)
    backend = RecordingBackend(name="thread")

    with pytest.raises(ValueError, match="only QUEUED"):
        backend.submit(dataclasses.replace(task, status=TaskStatus.CREATED))
    assert backend.submitted == []


def test_a_task_recorded_for_another_backend_is_refused(store: TaskStore) -> None:
    task = queued_task(store, backend="celery")
    backend = RecordingBackend(name="thread")

    with pytest.raises(ValueError, match="recorded for 'celery'"):
        backend.submit(task)
    assert backend.submitted == []
