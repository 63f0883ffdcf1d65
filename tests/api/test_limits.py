"""Input limits: body size (413), strict bodies and bounds (422), allow-listed output, CORS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.limits import MAX_PAYLOAD_DEPTH
from api.settings import load_settings
from execution.settings import SettingsError
from tests.api.conftest import ApiUnderTest, BuildApi, Keyholder

JSON = {"Content-Type": "application/json"}
TASK_FIELDS = {
    "task_id",
    "user_id",
    "tool_id",
    "status",
    "progress",
    "message",
    "priority",
    "payload",
    "result",
    "error_code",
    "error_message",
    "backend",
    "attempts_before_retry",
    "lease_owner",
    "lease_expires_at",
    "run_after",
    "dispatched_at",
    "cancel_requested_at",
    "idempotency_key",
    "celery_task_id",
    "attempts",
    "rollout_bucket",
    "rollout_percentage",
    "created_at",
    "queued_at",
    "processing_started_at",
    "completed_at",
    "failed_at",
    "updated_at",
}


@pytest.fixture
def small(build_api: BuildApi) -> ApiUnderTest:
    """An app that takes request bodies of at most 2 KiB."""
    return build_api(max_request_bytes=2048)


def body_of(size: int) -> bytes:
    """A valid task request of exactly `size` bytes."""
    empty = json.dumps({"tool_id": "noop", "payload": {"pad": ""}}).encode()
    return json.dumps({"tool_id": "noop", "payload": {"pad": "x" * (size - len(empty))}}).encode()


def test_a_body_over_the_limit_gets_413_naming_the_setting(small: ApiUnderTest) -> None:
    user = small.issue("alice")
    response = small.client.post(
        "/tasks",
        content=body_of(2049),
        headers={**user.headers, **JSON},
    )
    assert response.status_code == 413
    assert "MAX_REQUEST_BYTES (2048 bytes)" in response.json()["detail"]


def test_a_streamed_body_without_content_length_is_counted_and_refused(
    small: ApiUnderTest,
) -> None:
    user = small.issue("alice")

    def chunks() -> Iterator[bytes]:
        body = body_of(4000)
        for start in range(0, len(body), 500):
            yield body[start : start + 500]

    response = small.client.post("/tasks", content=chunks(), headers={**user.headers, **JSON})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413


def test_a_body_at_the_limit_is_taken(small: ApiUnderTest) -> None:
    user = small.issue("alice")
    response = small.client.post(
        "/tasks",
        content=body_of(2048),
        headers={**user.headers, **JSON},
    )
    assert response.status_code == 201


def test_a_refused_body_creates_no_task(small: ApiUnderTest) -> None:
    user = small.issue("alice")
    small.client.post(
        "/tasks",
        content=body_of(5000),
        headers={**user.headers, **JSON},
    )
    assert small.client.get("/tasks", headers=user.headers).json()["items"] == []


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"tool_id": "noop", "priority": 10}, ["body", "priority"]),
        ({"tool_id": "noop", "priority": -1}, ["body", "priority"]),
        ({"tool_id": "noop", "owner": "bob"}, ["body", "owner"]),
        ({"tool_id": "noop", "user_id": "bob"}, ["body", "user_id"]),
        ({"tool_id": ""}, ["body", "tool_id"]),
        ({"payload": {}}, ["body", "tool_id"]),
        ({"tool_id": "noop", "payload": []}, ["body", "payload"]),
    ],
)
def test_a_request_body_outside_the_schema_gets_422_saying_where(
    auth_api: ApiUnderTest, alice: Keyholder, body: dict[str, object], where: list[str]
) -> None:
    response = auth_api.client.post("/tasks", json=body, headers=alice.headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == where
    assert response.json()["detail"].startswith("invalid request: ")


@pytest.mark.parametrize(
    "raw",
    [
        '{"tool_id": "noop", "payload": {"x": NaN}}',
        '{"tool_id": "noop", "payload": {"x": -Infinity}}',
        '{"tool_id": "noop", "payload": {"x": 1e999}}',
        '{"tool_id": "noop", "payload": {"x": "\\ud800"}}',
        '{"tool_id": "noop", "payload": {"\\udfff": 1}}',
        '{"tool_id": "noop", "payload": {"x": '
        + "[" * (MAX_PAYLOAD_DEPTH + 1)
        + "]" * (MAX_PAYLOAD_DEPTH + 1)
        + "}}",
    ],
)
def test_a_payload_json_cannot_send_back_gets_422_and_no_task(
    auth_api: ApiUnderTest, alice: Keyholder, raw: str
) -> None:
    response = auth_api.client.post("/tasks", content=raw, headers={**alice.headers, **JSON})
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "payload"]
    assert auth_api.client.get("/tasks", headers=alice.headers).json()["items"] == []


def test_a_rejected_value_is_not_echoed_back(auth_api: ApiUnderTest, alice: Keyholder) -> None:
    response = auth_api.client.post(
        "/tasks", json={"tool_id": "noop", "password": "hunter2"}, headers=alice.headers
    )
    assert response.status_code == 422
    assert "hunter2" not in response.text


@pytest.mark.parametrize(
    "query",
    [
        {"limit": 501},
        {"limit": 0},
        {"offset": -1},
        {"offset": 1_000_001},
        {"status": "DONE"},
        {"user_id": "not a user"},
        {"tool_id": "nul\x00byte"},
    ],
)
def test_listing_parameters_outside_their_bounds_get_422(
    auth_api: ApiUnderTest, ops: Keyholder, query: dict[str, object]
) -> None:
    response = auth_api.client.get("/tasks", params=query, headers=ops.headers)
    assert response.status_code == 422


@pytest.mark.parametrize("path", ["/tasks?stauts=FAILED", "/tasks/some-task?verbose=1", "/tools?x"])
def test_a_query_parameter_the_route_does_not_take_gets_422_naming_it(
    auth_api: ApiUnderTest, ops: Keyholder, path: str
) -> None:
    response = auth_api.client.get(path, headers=ops.headers)
    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"][0] == "query"


def test_a_malformed_task_id_gets_422(auth_api: ApiUnderTest, alice: Keyholder) -> None:
    assert auth_api.client.get("/tasks/a%00b", headers=alice.headers).status_code == 422


def test_a_task_shows_the_allow_listed_fields_and_nothing_else(
    auth_api: ApiUnderTest, alice: Keyholder
) -> None:
    created = auth_api.client.post("/tasks", json={"tool_id": "noop"}, headers=alice.headers).json()
    listed = auth_api.client.get("/tasks", headers=alice.headers).json()
    assert set(created) == TASK_FIELDS
    assert set(listed) == {"items", "limit", "offset"}
    assert set(listed["items"][0]) == TASK_FIELDS


def test_cors_is_off_by_default(auth_api: ApiUnderTest, alice: Keyholder) -> None:
    origin = {"Origin": "https://evil.example"}
    preflight = auth_api.client.options(
        "/tasks", headers={**origin, "Access-Control-Request-Method": "POST"}
    )
    simple = auth_api.client.get("/tasks", headers={**alice.headers, **origin})
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in simple.headers


def test_cors_admits_only_the_origins_named(build_api: BuildApi) -> None:
    auth_api = build_api(cors_origins="https://console.example, http://127.0.0.1:3000")

    def preflight(origin: str) -> str | None:
        response = auth_api.client.options(
            "/tasks",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        )
        allowed: str | None = response.headers.get("access-control-allow-origin")
        return allowed

    assert preflight("https://console.example") == "https://console.example"
    assert preflight("http://127.0.0.1:3000") == "http://127.0.0.1:3000"
    assert preflight("https://evil.example") is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CORS_ORIGINS", "*"),
        ("CORS_ORIGINS", "console.example"),
        ("CORS_ORIGINS", "https://console.example/path"),
        ("MAX_REQUEST_BYTES", "10"),
        ("ROLLOUT_CHANGE_LIMIT", "0"),
        ("ROLLOUT_CHANGE_WINDOW_SECONDS", "0"),
    ],
)
def test_a_bad_limit_setting_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        load_settings(env_file=None)
