"""Broken and hostile input refused at the edge: NUL in stored text, loose types, two keys.

PostgreSQL refuses NUL (\\u0000) in text and jsonb; SQLite stores it, so these requests are
refused on both databases alike (tests/integration/test_hostile_input_postgres.py runs the
same on a real PostgreSQL).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from structlog.testing import capture_logs

from api.keys import InvalidKeyRequest, Role
from tests.api.conftest import ApiUnderTest, Keyholder

JSON = {"Content-Type": "application/json"}


def _version(api: ApiUnderTest, holder: Keyholder) -> int:
    version: int = api.client.get("/rollout", headers=holder.headers).json()["version"]
    return version


# NUL in stored text


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({"text": "a\x00b"}, "payload.text"),
        ({"a\x00b": 1}, "payload key"),
        ({"deep": [{"er": ["ok", "not\x00ok"]}]}, "payload.deep[0].er[1]"),
    ],
)
def test_a_nul_anywhere_in_a_payload_is_422_naming_where_and_no_task(
    auth_api: ApiUnderTest, alice: Keyholder, payload: dict[str, Any], named: str
) -> None:
    response = auth_api.client.post(
        "/tasks", json={"tool_id": "noop", "payload": payload}, headers=alice.headers
    )

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "payload"]
    assert f"{named} holds a NUL character" in response.json()["detail"]
    assert auth_api.client.get("/tasks", headers=alice.headers).json()["items"] == []


def test_a_nul_in_a_tool_id_is_422(auth_api: ApiUnderTest, alice: Keyholder) -> None:
    response = auth_api.client.post("/tasks", json={"tool_id": "no\x00op"}, headers=alice.headers)

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "tool_id"]


@pytest.mark.parametrize("path", ["/rollout/rollback", "/rollout/restore"])
def test_a_nul_in_a_rollout_reason_is_422_naming_the_reason_and_changes_nothing(
    auth_api: ApiUnderTest, ops: Keyholder, path: str
) -> None:
    before = _version(auth_api, ops)

    response = auth_api.client.post(path, json={"reason": "oops\x00"}, headers=ops.headers)

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "reason"]
    assert "reason holds a NUL character" in response.json()["detail"]
    assert _version(auth_api, ops) == before


@pytest.mark.parametrize(
    "body",
    [
        {"percentage": 10, "reason": "step\x00one"},
        {"percentage": 10, "reason": "step one", "tool_overrides": {"no\x00op": 5}},
        {"percentage": 10, "reason": "lone \ud800 surrogate"},
    ],
)
def test_unstorable_text_in_a_rollout_change_is_422_and_changes_nothing(
    auth_api: ApiUnderTest, ops: Keyholder, body: dict[str, Any]
) -> None:
    before = _version(auth_api, ops)
    # json.dumps writes a lone surrogate as the escape \ud800, which the server reads back.
    response = auth_api.client.put(
        "/rollout",
        content=json.dumps(body),
        headers={**ops.headers, **JSON, "If-Match": f'"{before}"'},
    )

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"][:2] in (
        ["body", "reason"],
        ["body", "tool_overrides"],
    )
    assert _version(auth_api, ops) == before


def test_a_key_name_with_a_nul_is_refused(auth_api: ApiUnderTest) -> None:
    with pytest.raises(InvalidKeyRequest, match="key name holds a NUL character"):
        auth_api.runtime.keys.create(user_id="alice", role=Role.USER, name="laptop\x00")


# Strict types


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tool_id": "noop", "priority": True}, "priority"),
        ({"tool_id": "noop", "priority": "5"}, "priority"),
        ({"tool_id": "noop", "priority": 5.0}, "priority"),
        ({"tool_id": 7}, "tool_id"),
    ],
)
def test_a_task_field_of_the_wrong_json_type_is_422_not_coerced(
    auth_api: ApiUnderTest, alice: Keyholder, body: dict[str, Any], field: str
) -> None:
    response = auth_api.client.post("/tasks", json=body, headers=alice.headers)

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", field]
    assert auth_api.client.get("/tasks", headers=alice.headers).json()["items"] == []


def test_an_int_priority_is_still_taken(auth_api: ApiUnderTest, alice: Keyholder) -> None:
    response = auth_api.client.post(
        "/tasks", json={"tool_id": "noop", "priority": 5}, headers=alice.headers
    )

    assert response.status_code == 201
    assert response.json()["priority"] == 5


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"percentage": True}, ["body", "percentage"]),
        ({"percentage": False}, ["body", "percentage"]),
        ({"percentage": "50"}, ["body", "percentage"]),
        ({"tool_overrides": {"noop": True}}, ["body", "tool_overrides", "noop"]),
        ({"tool_overrides": {"noop": "5"}}, ["body", "tool_overrides", "noop"]),
        ({"stickiness": 1}, ["body", "stickiness"]),
        ({"reason": 5}, ["body", "reason"]),
    ],
)
def test_a_rollout_field_of_the_wrong_json_type_is_422_and_changes_nothing(
    auth_api: ApiUnderTest, ops: Keyholder, change: dict[str, Any], where: list[str]
) -> None:
    before = _version(auth_api, ops)

    response = auth_api.client.put(
        "/rollout",
        json={"reason": "typed", **change},
        headers={**ops.headers, "If-Match": f'"{before}"'},
    )

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == where
    assert _version(auth_api, ops) == before


def test_json_ints_and_stickiness_names_are_still_taken_by_put_rollout(
    auth_api: ApiUnderTest, ops: Keyholder
) -> None:
    before = _version(auth_api, ops)

    response = auth_api.client.put(
        "/rollout",
        json={
            "percentage": 25,
            "tool_overrides": {"noop": 10, "sleep": 2.5},
            "stickiness": "user_id",
            "reason": "ints are numbers",
        },
        headers={**ops.headers, "If-Match": f'"{before}"'},
    )

    assert response.status_code == 200
    body = response.json()
    assert (body["percentage"], body["tool_overrides"], body["stickiness"]) == (
        25,
        {"noop": 10, "sleep": 2.5},
        "user_id",
    )


def test_a_rollback_reason_of_the_wrong_type_is_422(auth_api: ApiUnderTest, ops: Keyholder) -> None:
    response = auth_api.client.post("/rollout/rollback", json={"reason": 1}, headers=ops.headers)

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["body", "reason"]


# Two Authorization headers


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/tasks", None),
        ("GET", "/tools", None),
        ("POST", "/tasks", {"tool_id": "noop"}),
        ("POST", "/rollout/rollback", {"reason": "who am I"}),
    ],
)
def test_two_authorization_headers_are_400_before_either_key_is_checked(
    auth_api: ApiUnderTest,
    alice: Keyholder,
    ops: Keyholder,
    method: str,
    path: str,
    body: dict[str, str] | None,
) -> None:
    before = _version(auth_api, ops)
    both = [("Authorization", f"Bearer {ops.token}"), ("Authorization", f"Bearer {alice.token}")]

    with capture_logs() as logs:
        response = auth_api.client.request(method, path, json=body, headers=both)

    assert response.status_code == 400
    assert "more than one Authorization header" in response.json()["detail"]
    denied = [e for e in logs if e["event"] == "auth.denied"]
    assert [(d["status"], d["user_id"]) for d in denied] == [(400, None)]
    assert auth_api.client.get("/tasks", headers=ops.headers).json()["items"] == []
    assert _version(auth_api, ops) == before


def test_two_authorization_headers_are_400_even_when_one_key_is_invalid(
    auth_api: ApiUnderTest, ops: Keyholder
) -> None:
    both = [("Authorization", f"Bearer {ops.token}"), ("Authorization", "Bearer nonsense")]

    assert auth_api.client.get("/rollout", headers=both).status_code == 400
    assert auth_api.client.get("/rollout", headers=ops.headers).status_code == 200


def test_health_needs_no_key_so_two_headers_do_not_matter_there(
    auth_api: ApiUnderTest, ops: Keyholder
) -> None:
    both = [("Authorization", f"Bearer {ops.token}"), ("Authorization", "Bearer nonsense")]

    assert auth_api.client.get("/health", headers=both).status_code == 200
