"""TaskExecutor: claims once, runs the tool, stores how it ended; a tool's error never escapes."""

from __future__ import annotations

from typing import Any

from execution.executor import RunOutcome, TaskExecutor
from execution.records import TaskRecord
from execution.status import TaskStatus
from execution.store import TaskStore
from tests.helpers import queued_task
from tests.tools import Gate


def _run(
    executor: TaskExecutor, store: TaskStore, tool_id: str, payload: Any = None
) -> tuple[RunOutcome, TaskRecord]:
    task_id = queued_task(store, tool_id=tool_id, payload=payload).task_id
    outcome = executor.run(task_id)
    record = store.get(task_id)
    assert record is not None
    return outcome, record


def _progress_events(store: TaskStore, task_id: str) -> list[tuple[int, str | None]]:
    """(progress, message) of every event the tool's progress calls wrote."""
    events = store.events(task_id)
    return [
        (e.progress, e.message)
        for e in events
        if e.status is TaskStatus.PROCESSING and e.message != "started"
    ]


def test_a_successful_task_is_completed_with_its_result_and_progress_history(
    executor: TaskExecutor, store: TaskStore
) -> None:
    outcome, record = _run(executor, store, "sleep", {"seconds": 0, "steps": 4})

    assert outcome is RunOutcome.COMPLETED
    assert record.status is TaskStatus.COMPLETED
    assert record.result == {"slept_seconds": 0}
    assert (record.progress, record.attempts) == (100, 1)
    assert (record.error_code, record.error_message) == (None, None)
    assert [(e.status, e.progress) for e in store.events(record.task_id)] == [
        (TaskStatus.CREATED, 0),
        (TaskStatus.QUEUED, 0),
        (TaskStatus.PROCESSING, 0),
        (TaskStatus.PROCESSING, 25),
        (TaskStatus.PROCESSING, 50),
        (TaskStatus.PROCESSING, 75),
        (TaskStatus.PROCESSING, 100),
        (TaskStatus.COMPLETED, 100),
    ]


def test_the_tool_receives_its_task_attempt_and_validated_payload(
    executor: TaskExecutor, store: TaskStore
) -> None:
    _, record = _run(executor, store, "echo", {"n": [1, 2]})

    assert record.result == {"task_id": record.task_id, "attempt": 1, "payload": {"n": [1, 2]}}


def test_a_tool_exception_fails_the_task_with_its_type_and_message(
    executor: TaskExecutor, store: TaskStore
) -> None:
    outcome, record = _run(executor, store, "fail", {"message": "disk on fire"})

    assert outcome is RunOutcome.FAILED
    assert record.status is TaskStatus.FAILED
    assert (record.error_code, record.error_message) == ("ToolFailure", "disk on fire")
    assert record.failed_at is not None
    assert record.result is None


def test_an_ordinary_bug_in_a_tool_is_stored_without_a_traceback(
    executor: TaskExecutor, store: TaskStore
) -> None:
    outcome, record = _run(executor, store, "divide")

    assert outcome is RunOutcome.FAILED
    assert (record.error_code, record.error_message) == ("ZeroDivisionError", "division by zero")
    assert "Traceback" not in (record.error_message or "")


def test_progress_before_a_failure_stays_in_the_history(
    executor: TaskExecutor, store: TaskStore
) -> None:
    _, record = _run(executor, store, "fail", {"after_percent": 30})

    assert _progress_events(store, record.task_id) == [(30, "about to fail")]
    assert store.events(record.task_id)[-1].status is TaskStatus.FAILED


def test_an_unknown_tool_fails_the_task_naming_the_known_ones(
    executor: TaskExecutor, store: TaskStore
) -> None:
    outcome, record = _run(executor, store, "no-such-tool")

    assert outcome is RunOutcome.FAILED
    assert record.error_code == "UnknownTool"
    assert "no-such-tool" in (record.error_message or "")
    assert "profile-csv" in (record.error_message or "")


def test_an_invalid_payload_fails_the_task_saying_what_is_wrong(
    executor: TaskExecutor, store: TaskStore
) -> None:
    outcome, record = _run(executor, store, "sleep", {"seconds": -1})

    assert outcome is RunOutcome.FAILED
    assert record.error_code == "InvalidPayload"
    assert "seconds" in (record.error_message or "")


def test_a_result_that_is_not_json_fails_the_task(executor: TaskExecutor, store: TaskStore) -> None:
    for tool_id in ("returns-set", "returns-nan"):
        outcome, record = _run(executor, store, tool_id)

        assert outcome is RunOutcome.FAILED
        assert record.error_code == "ResultNotSerializable"
        assert record.result is None


def test_a_second_run_of_the_same_task_does_nothing(
    executor: TaskExecutor, store: TaskStore
) -> None:
    _, first = _run(executor, store, "noop")
    history = store.events(first.task_id)

    assert executor.run(first.task_id) is RunOutcome.NOT_CLAIMED

    assert store.get(first.task_id) == first
    assert store.events(first.task_id) == history


def test_a_cancelled_or_missing_task_never_reaches_its_tool(
    executor: TaskExecutor, store: TaskStore, gate: Gate
) -> None:
    task_id = queued_task(store, tool_id="gate").task_id
    assert store.cancel(task_id, reason="changed my mind") is not None

    assert executor.run(task_id) is RunOutcome.NOT_CLAIMED
    assert executor.run("00000000-0000-4000-8000-000000000000") is RunOutcome.NOT_CLAIMED

    assert gate.ran == []
    record = store.get(task_id)
    assert record is not None
    assert (record.status, record.attempts) == (TaskStatus.CANCELLED, 0)


def test_ten_thousand_tiny_progress_steps_write_about_one_event_per_percent(
    executor: TaskExecutor, store: TaskStore
) -> None:
    outcome, record = _run(executor, store, "chatty", {"calls": 10_000})

    assert outcome is RunOutcome.COMPLETED
    written = _progress_events(store, record.task_id)
    assert len(written) <= 101
    assert {progress for progress, _ in written} == set(range(101))
