"""/tasks over HTTP: create, read, list, history, cancel; every bad request gets a reason."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from execution.store import TaskStore
from tests.helpers import queued_task

TIME_FIELDS = (
    "created_at",
    "queued_at",
    "processing_started_at",
    "completed_at",
    "failed_at",
    "updated_at",
)


def _post(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/tasks", json=body)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


def _get(client: TestClient, task_id: str) -> dict[str, Any]:
    response = client.get(f"/tasks/{task_id}")
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    return task


def test_post_creates_a_queued_task_and_answers_201_with_the_row(client: TestClient) -> None:
    task = _post(client, {"tool_id": "echo", "payload": {"n": 1}, "priority": 4})

    assert task["status"] == "QUEUED"
    assert (task["tool_id"], task["payload"], task["priority"]) == ("echo", {"n": 1}, 4)
    assert task["backend"] == "thread"
    assert 0 <= task["rollout_bucket"] <= 9999
    assert task["rollout_percentage"] == 0.0
    assert set(task) >= {"user_id", "progress", "message", "result", "attempts", "celery_task_id"}


def test_get_returns_the_task_as_it_is_now(client: TestClient) -> None:
    task_id = _post(client, {"tool_id": "echo", "payload": {"n": 1}})["task_id"]

    task = _get(client, task_id)

    assert task["status"] == "COMPLETED"
    assert task["result"] == {"task_id": task_id, "attempt": 1, "payload": {"n": 1}}
    assert (task["progress"], task["attempts"]) == (100, 1)


def test_times_are_iso_8601_utc(client: TestClient) -> None:
    task = _get(client, _post(client, {"tool_id": "noop"})["task_id"])

    for field in TIME_FIELDS:
        if task[field] is None:
            assert field == "failed_at"
            continue
        parsed = datetime.fromisoformat(task[field])
        assert parsed.tzinfo is not None
        assert parsed.utcoffset() == timedelta(0)
        assert task[field].endswith(("Z", "+00:00"))


def test_an_unknown_tool_is_422_naming_the_known_tools(client: TestClient) -> None:
    response = client.post("/tasks", json={"tool_id": "profile_csv", "payload": {}})

    assert response.status_code == 422
    body = response.json()
    assert "unknown tool 'profile_csv'" in body["detail"]
    assert "profile-csv" in body["detail"]
    assert {"noop", "sleep", "fail", "profile-csv"} <= set(body["known_tools"])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"tool_id": "sleep", "payload": {"seconds": -1}}, "seconds"),
        ({"tool_id": "sleep", "payload": {"minutes": 1}}, "minutes"),
        ({"tool_id": "profile-csv", "payload": {}}, "exactly one"),
    ],
)
def test_an_invalid_payload_is_422_saying_what_is_wrong(
    client: TestClient, body: dict[str, Any], reason: str
) -> None:
    response = client.post("/tasks", json=body)

    assert response.status_code == 422
    assert reason in response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"tool_id": "noop", "payload": {}, "colour": "blue"},
        {"tool_id": "noop", "priority": 10},
        {"tool_id": "noop", "payload": [1, 2]},
        {"payload": {}},
        {"tool_id": ""},
    ],
)
def test_a_malformed_request_is_422_and_creates_nothing(
    client: TestClient, body: dict[str, Any]
) -> None:
    response = client.post("/tasks", json=body)

    assert response.status_code == 422
    assert response.json()["detail"]
    assert client.get("/tasks").json()["items"] == []


def test_an_unknown_task_is_404(client: TestClient) -> None:
    for path in ("/tasks/no-such-task", "/tasks/no-such-task/events"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json() == {"detail": "no task no-such-task"}


def test_list_filters_by_status_tool_and_backend_and_pages(client: TestClient) -> None:
    first = _post(client, {"tool_id": "noop"})["task_id"]
    failed = _post(client, {"tool_id": "fail"})["task_id"]
    last = _post(client, {"tool_id": "noop"})["task_id"]

    def ids(query: str) -> list[str]:
        response = client.get(f"/tasks?{query}")
        assert response.status_code == 200, response.text
        return [task["task_id"] for task in response.json()["items"]]

    assert ids("") == [last, failed, first]
    assert ids("status=FAILED") == [failed]
    assert ids("status=COMPLETED&tool_id=noop") == [last, first]
    assert ids("tool_id=fail") == [failed]
    assert ids("backend=thread") == [last, failed, first]
    assert ids("backend=celery") == []
    assert ids("limit=1&offset=1") == [failed]
    page = client.get("/tasks?limit=1&offset=2").json()
    assert (page["limit"], page["offset"], len(page["items"])) == (1, 2, 1)


@pytest.mark.parametrize(
    "query", ["status=DONE", "backend=kubernetes", "limit=0", "limit=501", "offset=-1"]
)
def test_a_bad_list_filter_is_422(client: TestClient, query: str) -> None:
    assert client.get(f"/tasks?{query}").status_code == 422


def test_events_are_the_transition_history_oldest_first(client: TestClient) -> None:
    task_id = _post(client, {"tool_id": "sleep", "payload": {"seconds": 0, "steps": 2}})["task_id"]

    events = client.get(f"/tasks/{task_id}/events").json()

    assert [(e["seq"], e["status"], e["progress"]) for e in events] == [
        (1, "CREATED", 0),
        (2, "QUEUED", 0),
        (3, "PROCESSING", 0),
        (4, "PROCESSING", 50),
        (5, "PROCESSING", 100),
        (6, "COMPLETED", 100),
    ]
    assert all(datetime.fromisoformat(e["at"]).tzinfo is not None for e in events)


def test_a_failed_task_shows_its_error(client: TestClient) -> None:
    task_id = _post(client, {"tool_id": "fail", "payload": {"message": "no disk"}})["task_id"]

    task = _get(client, task_id)

    assert task["status"] == "FAILED"
    assert (task["error_code"], task["error_message"]) == ("ToolFailure", "no disk")
    assert task["failed_at"] is not None


def test_cancel_a_queued_task_is_200_then_409_and_unknown_is_404(
    client: TestClient, store: TaskStore
) -> None:
    task_id = queued_task(store).task_id

    cancelled = client.post(f"/tasks/{task_id}/cancel")
    again = client.post(f"/tasks/{task_id}/cancel")
    unknown = client.post("/tasks/no-such-task/cancel")

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "CANCELLED"
    assert again.status_code == 409
    assert "CANCELLED" in again.json()["detail"]
    assert unknown.status_code == 404


def test_cancel_of_a_finished_task_is_409_and_changes_nothing(client: TestClient) -> None:
    task = _get(client, _post(client, {"tool_id": "noop"})["task_id"])

    response = client.post(f"/tasks/{task['task_id']}/cancel")

    assert response.status_code == 409
    assert "only a waiting or running task can be cancelled" in response.json()["detail"]
    assert _get(client, task["task_id"]) == task
