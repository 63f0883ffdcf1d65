"""The failed tasks' dead-letter view: GET /tasks filtered by error code and time, and
POST /tasks/retry retrying what the same filters match, through the dispatcher."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from execution.status import TaskStatus
from tests.api.failed_stack import Stack, failed_stack


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """The app; see tests/api/failed_stack.py."""
    with failed_stack(tmp_path) as stack:
        yield stack


def iso(moment: datetime) -> str:
    return moment.isoformat()


def test_failed_tasks_are_listed_by_tool_error_code_and_window(stack: Stack) -> None:
    tool_failure = stack.failed("alice", "fail")
    zero_division = stack.failed("alice", "divide")
    earlier = stack.failed("bob", "divide")
    stack.failed_ago(earlier, timedelta(hours=2))
    completed = stack.client.post("/tasks", json={"tool_id": "noop"}, headers=stack.as_("ops"))
    hour_ago = datetime.now(UTC) - timedelta(hours=1)

    assert set(stack.listed(status="FAILED")) == {tool_failure, zero_division, earlier}
    assert set(stack.listed(error_code="ZeroDivisionError")) == {zero_division, earlier}
    assert stack.listed(tool_id="fail", error_code="ToolFailure") == [tool_failure]
    assert stack.listed(tool_id="fail", error_code="ZeroDivisionError") == []
    assert stack.listed(status="FAILED", error_code="ZeroDivisionError", since=iso(hour_ago)) == [
        zero_division
    ]
    assert stack.listed(status="FAILED", until=iso(hour_ago)) == [earlier]
    assert stack.listed(since=iso(hour_ago - timedelta(hours=2)), until=iso(hour_ago)) == [earlier]
    assert completed.json()["task_id"] in stack.listed(since=iso(hour_ago), backend="thread")
    assert stack.listed(status="FAILED", since=iso(datetime.now(UTC) + timedelta(minutes=1))) == []


@pytest.mark.parametrize(
    ("params", "where", "reason"),
    [
        ({"since": "2026-11-30T09:00:00"}, "since", "timezone"),
        ({"until": "yesterday"}, "until", "datetime"),
        ({"until": "244750146"}, "until", "ISO 8601"),  # not read as a Unix time
        (
            {"since": "2026-11-30T10:00:00Z", "until": "2026-11-30T09:00:00Z"},
            "until",
            "must be after since",
        ),
        ({"error_code": "E\x01"}, "error_code", "pattern"),
        ({"error_code": "E" * 129}, "error_code", "at most 128"),
        ({"status": "BROKEN"}, "status", "QUEUED"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_bad_filter_is_refused_with_its_reason(
    stack: Stack, method: str, params: dict[str, str], where: str, reason: str
) -> None:
    path = "/tasks" if method == "GET" else "/tasks/retry"
    answer = stack.client.request(method, path, params=params, headers=stack.as_("ops"))

    assert answer.status_code == 422
    assert answer.json()["errors"][0]["loc"] == ["query", where]
    assert reason in answer.json()["detail"]


def test_a_dry_run_lists_the_matching_tasks_and_changes_nothing(stack: Stack) -> None:
    failed = {stack.failed("alice", "fail"), stack.failed("alice", "divide")}

    answer = stack.retry(dry_run=True)

    assert answer["dry_run"] is True
    assert set(answer["matched"]) == failed
    assert answer["retried"] == answer["skipped"] == []
    assert set(stack.listed(status="FAILED")) == failed
    assert stack.celery.submitted == []


def test_retried_tasks_are_queued_on_the_backend_the_rollout_gives_them_now(
    stack: Stack,
) -> None:
    divided = {stack.failed("alice", "divide") for _ in range(2)}
    other = stack.failed("alice", "fail")
    stack.rollout(100)

    answer = stack.retry(tool_id="divide", since=iso(datetime.now(UTC) - timedelta(hours=1)))

    assert {task["task_id"] for task in answer["retried"]} == divided
    assert {task["backend"] for task in answer["retried"]} == {"celery"}
    assert {task.task_id for task in stack.celery.submitted} == divided
    for task_id in divided:
        record = stack.runtime.store.get(task_id)
        assert record is not None
        assert (record.status, record.backend, record.error_code) == (
            TaskStatus.QUEUED,
            "celery",
            None,
        )
        assert stack.runtime.store.events(task_id)[-1].message == "retry requested by ops"
    assert stack.listed(status="FAILED") == [other]


def test_a_bulk_retry_takes_at_most_limit_and_says_that_more_match(stack: Stack) -> None:
    failed = {stack.failed("alice") for _ in range(3)}
    stack.rollout(100)

    first = stack.retry(limit=2)
    second = stack.retry(limit=2)

    assert (len(first["retried"]), first["more"]) == (2, True)
    assert (len(second["retried"]), second["more"]) == (1, False)
    assert {t["task_id"] for t in first["retried"] + second["retried"]} == failed
    assert stack.retry(limit=2)["matched"] == []


def test_cancelled_tasks_are_retried_when_asked_and_other_statuses_never(stack: Stack) -> None:
    stack.rollout(100)  # recorded by Celery, never run: they stay QUEUED
    queued = stack.client.post("/tasks", json={"tool_id": "noop"}, headers=stack.as_("ops"))
    task_id = queued.json()["task_id"]
    stack.client.post(f"/tasks/{task_id}/cancel", headers=stack.as_("ops"))

    assert stack.retry()["matched"] == []
    assert [t["task_id"] for t in stack.retry(status="CANCELLED")["retried"]] == [task_id]
    refused = stack.client.post(
        "/tasks/retry", params={"status": "QUEUED"}, headers=stack.as_("ops")
    )
    assert refused.status_code == 422
    assert "only FAILED or CANCELLED tasks can be retried" in refused.json()["detail"]


def test_a_task_its_backend_refuses_now_is_skipped_with_the_reason(stack: Stack) -> None:
    task_id = stack.failed("alice")
    stack.rollout(100)
    stack.celery.unavailable = "broker down for the test"

    answer = stack.retry()

    assert answer["retried"] == []
    assert answer["skipped"] == [
        {"task_id": task_id, "tool_id": "fail", "reason": "broker down for the test"}
    ]


def test_a_user_lists_and_retries_only_their_own_failed_tasks(stack: Stack) -> None:
    hers = stack.failed("alice")
    his = stack.failed("bob")
    stack.rollout(100)

    assert stack.listed("alice", status="FAILED") == [hers]
    assert [t["task_id"] for t in stack.retry("alice")["retried"]] == [hers]
    assert stack.listed(status="FAILED") == [his]
    for method, path in (("GET", "/tasks"), ("POST", "/tasks/retry")):
        denied = stack.client.request(
            method, path, params={"user_id": "bob"}, headers=stack.as_("alice")
        )
        assert denied.status_code == 403
    assert [t["task_id"] for t in stack.retry("ops", user_id="bob")["retried"]] == [his]
