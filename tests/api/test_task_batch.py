"""POST /tasks/batch: all or nothing, item order, per-item routing, the same limits as /tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from api.runtime import Runtime
from backends.testing import RecordingBackend
from execution.store import TaskFilter
from execution.tools.registry import load_registry
from tests.api.conftest import ApiUnderTest, BuildApi, Keyholder, api_settings
from tests.helpers import operator_client


def _items(count: int, tool_id: str = "noop") -> list[dict[str, Any]]:
    return [{"tool_id": tool_id, "payload": {}} for _ in range(count)]


def _created(api: ApiUnderTest) -> int:
    return len(api.runtime.store.find(TaskFilter(), limit=500, offset=0))


@pytest.fixture
def real_threads(tmp_path: Path) -> Runtime:
    """A runtime with the real thread pool, one thread and room for two waiting tasks."""
    settings = api_settings(tmp_path, background_workers=1, background_queue_size=2)
    runtime = Runtime.build(settings, registry=load_registry(["execution.tools.builtin"]))
    runtime.prepare_database()
    return runtime


def test_a_batch_creates_every_task_in_item_order_owned_by_the_caller(
    auth_api: ApiUnderTest, alice: Keyholder
) -> None:
    items = [
        {"tool_id": "sleep", "payload": {"seconds": 0}, "priority": 2},
        {"tool_id": "noop", "payload": {}},
        {"tool_id": "fail", "payload": {"message": "no"}, "priority": 9},
    ]

    response = auth_api.client.post("/tasks/batch", json={"items": items}, headers=alice.headers)

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["rejected"] == 0
    tasks = body["items"]
    assert [(t["tool_id"], t["priority"]) for t in tasks] == [
        ("sleep", 2),
        ("noop", 0),
        ("fail", 9),
    ]
    assert {(t["status"], t["user_id"], t["backend"]) for t in tasks} == {
        ("QUEUED", "alice", "thread")
    }
    for task in tasks:  # each one readable by its owner like any task
        assert auth_api.client.get(f"/tasks/{task['task_id']}", headers=alice.headers).is_success


def test_an_unknown_tool_or_a_bad_payload_rejects_the_batch_naming_each_item(
    auth_api: ApiUnderTest, alice: Keyholder
) -> None:
    items = [*_items(2), {"tool_id": "nope"}, {"tool_id": "sleep", "payload": {"seconds": "x"}}]

    response = auth_api.client.post("/tasks/batch", json={"items": items}, headers=alice.headers)

    assert response.status_code == 422
    body = response.json()
    assert body["detail"].startswith("invalid batch, nothing created: item 2: unknown tool 'nope'")
    assert [e["loc"] for e in body["errors"]] == [
        ["body", "items", 2, "tool_id"],
        ["body", "items", 3, "payload"],
    ]
    assert "payload for 'sleep' is invalid: seconds" in body["errors"][1]["msg"]
    assert _created(auth_api) == 0


def test_an_item_outside_the_schema_is_named_by_its_index(
    auth_api: ApiUnderTest, alice: Keyholder
) -> None:
    items = [*_items(3), {"tool_id": "noop", "priority": 10}]

    response = auth_api.client.post("/tasks/batch", json={"items": items}, headers=alice.headers)

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "items", 3, "priority"]
    assert _created(auth_api) == 0


def test_more_items_than_batch_max_items_are_refused_naming_the_setting(
    build_api: BuildApi,
) -> None:
    api = build_api(batch_max_items=3)
    alice = api.issue("alice")

    response = api.client.post("/tasks/batch", json={"items": _items(4)}, headers=alice.headers)

    assert response.status_code == 422
    assert "at most 3 items per batch (BATCH_MAX_ITEMS), got 4" in response.json()["detail"]
    assert response.json()["max_items"] == 3
    assert response.json()["errors"][0]["loc"] == ["body", "items"]
    assert _created(api) == 0
    fits = api.client.post("/tasks/batch", json={"items": _items(3)}, headers=alice.headers)
    assert fits.status_code == 202


def test_an_empty_batch_is_refused(auth_api: ApiUnderTest, alice: Keyholder) -> None:
    response = auth_api.client.post("/tasks/batch", json={"items": []}, headers=alice.headers)

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "items"]


def test_a_batch_over_max_request_bytes_gets_413_and_creates_nothing(build_api: BuildApi) -> None:
    api = build_api(max_request_bytes=2048)
    alice = api.issue("alice")
    items = [{"tool_id": "echo", "payload": {"text": "x" * 100}} for _ in range(30)]

    response = api.client.post("/tasks/batch", json={"items": items}, headers=alice.headers)

    assert response.status_code == 413
    assert "MAX_REQUEST_BYTES" in response.json()["detail"]
    assert _created(api) == 0


def test_a_thread_pool_without_room_for_the_batch_answers_503_and_creates_nothing(
    real_threads: Runtime,
) -> None:
    with operator_client(real_threads) as client:
        response = client.post("/tasks/batch", json={"items": _items(3)})

        assert response.status_code == 503
        assert "cannot take 3 more tasks" in response.json()["detail"]
        assert int(response.headers["Retry-After"]) > 0
        assert real_threads.store.find(TaskFilter(), limit=10, offset=0) == []
        assert client.post("/tasks/batch", json={"items": _items(2)}).status_code == 202


def test_items_of_one_batch_are_routed_to_both_backends_by_the_rollout(tmp_path: Path) -> None:
    settings = api_settings(tmp_path, use_celery=True, celery_rollout_percentage=50)
    thread, celery = RecordingBackend(name="thread"), RecordingBackend(name="celery")
    runtime = Runtime.build(
        settings,
        backends={"thread": thread, "celery": celery},
        registry=load_registry(["execution.tools.builtin"]),
    )
    runtime.prepare_database()
    with operator_client(runtime) as client:
        response = client.post("/tasks/batch", json={"items": _items(40)})

    assert response.status_code == 202
    tasks = response.json()["items"]
    on = {
        name: {t["task_id"] for t in tasks if t["backend"] == name} for name in ("thread", "celery")
    }
    assert on["thread"] == {t.task_id for t in thread.submitted}
    assert on["celery"] == {t.task_id for t in celery.submitted}
    assert on["thread"]
    assert on["celery"]


def test_items_refused_after_the_commit_are_listed_as_rejected(build_api: BuildApi) -> None:
    api = build_api(backend=RecordingBackend(name="thread", unavailable="pool stopped"))
    alice = api.issue("alice")

    response = api.client.post("/tasks/batch", json={"items": _items(3)}, headers=alice.headers)

    assert response.status_code == 202
    body = response.json()
    assert body["rejected"] == 3
    assert {(t["status"], t["error_code"], t["message"]) for t in body["items"]} == {
        ("CANCELLED", "REJECTED", "not accepted: pool stopped")
    }
