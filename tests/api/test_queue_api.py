"""POST /queue/purge and GET /queue/stats: operators only; a dry run counts, a purge cancels
with who and why; a bad filter is a 422 naming it."""

from __future__ import annotations

from typing import Any

import pytest

from api.keys import Role
from tests.api.conftest import ApiUnderTest, Keyholder


def _submit(api: ApiUnderTest, who: Keyholder, tool_id: str, count: int) -> list[str]:
    """Tasks the recording thread backend keeps QUEUED."""
    ids = []
    for _ in range(count):
        response = api.client.post("/tasks", json={"tool_id": tool_id}, headers=who.headers)
        assert response.status_code == 201, response.text
        ids.append(response.json()["task_id"])
    return ids


def _purge(api: ApiUnderTest, who: Keyholder, **body: Any) -> Any:
    return api.client.post(
        "/queue/purge", json={"reason": "bad batch", **body}, headers=who.headers
    )


def test_purge_and_stats_are_for_operators_only(
    auth_api: ApiUnderTest, alice: Keyholder, ops: Keyholder
) -> None:
    (task_id,) = _submit(auth_api, ops, "noop", 1)

    assert _purge(auth_api, alice, all=True, dry_run=False).status_code == 403
    assert auth_api.client.get("/queue/stats", headers=alice.headers).status_code == 403
    assert auth_api.client.post("/queue/purge", json={}).status_code == 401
    assert auth_api.client.get("/queue/stats").status_code == 401
    assert auth_api.client.get(f"/tasks/{task_id}", headers=ops.headers).json()["status"] == (
        "QUEUED"
    )


def test_a_dry_run_counts_and_the_purge_then_cancels_with_who_and_why(
    auth_api: ApiUnderTest, ops: Keyholder
) -> None:
    purged = _submit(auth_api, ops, "noop", 3)
    (kept,) = _submit(auth_api, ops, "sleep", 1)

    counted = _purge(auth_api, ops, tool_id="noop", dry_run=True)

    assert counted.status_code == 200, counted.text
    assert counted.json() == {
        "dry_run": True,
        "cancelled": 3,
        "by_backend": {"thread": {"noop": 3}},
        "running": 0,
        "running_by_backend": {},
    }
    assert auth_api.client.get(f"/tasks/{purged[0]}", headers=ops.headers).json()["status"] == (
        "QUEUED"
    )

    done = _purge(auth_api, ops, tool_id="noop", backend="thread", dry_run=False)

    assert done.json()["cancelled"] == 3
    assert not done.json()["dry_run"]
    for task_id in purged:
        task = auth_api.client.get(f"/tasks/{task_id}", headers=ops.headers).json()
        assert (task["status"], task["message"]) == ("CANCELLED", "purged by ops-oncall: bad batch")
        events = auth_api.client.get(f"/tasks/{task_id}/events", headers=ops.headers).json()
        assert events[-1]["status"] == "CANCELLED"
    assert auth_api.client.get(f"/tasks/{kept}", headers=ops.headers).json()["status"] == "QUEUED"
    assert _purge(auth_api, ops, tool_id="noop", dry_run=False).json()["cancelled"] == 0


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"dry_run": True}, "tool_id: name a tool, a backend or a queue"),
        ({"all": True, "tool_id": "noop", "dry_run": True}, "all: purge everything, or give"),
        ({"backend": "rabbit", "dry_run": True}, "backend: 'rabbit' is not a backend"),
        ({"queue": "nowhere", "dry_run": True}, "queue: no tool uses queue 'nowhere'"),
        ({"tool_id": "nope", "dry_run": False}, "unknown tool 'nope'"),
        ({"tool_id": "noop"}, "dry_run: Field required"),
        (
            {"tool_id": "noop", "dry_run": True, "reason": ""},
            "reason: Value should have at least 1 item",
        ),
    ],
)
def test_a_bad_or_missing_filter_is_a_422_and_changes_nothing(
    auth_api: ApiUnderTest, ops: Keyholder, body: dict[str, Any], says: str
) -> None:
    (task_id,) = _submit(auth_api, ops, "noop", 1)

    response = _purge(auth_api, ops, **body)

    assert response.status_code == 422
    assert says in response.json()["detail"]
    assert auth_api.client.get(f"/tasks/{task_id}", headers=ops.headers).json()["status"] == (
        "QUEUED"
    )


def test_stats_count_by_status_and_backend_and_list_the_paused_tools(
    auth_api: ApiUnderTest,
) -> None:
    ops = auth_api.issue("ops", Role.OPERATOR)
    _submit(auth_api, ops, "noop", 2)

    response = auth_api.client.get("/queue/stats", headers=ops.headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["database"] == "ok"
    assert body["tasks"]["QUEUED"] == {"thread": 2}
    assert body["backends"]["thread"]["queued"] == 2
    assert body["broker"]["state"] == "not_in_this_process"
    assert body["thread_pool"] is None  # the recording backend is no pool
    assert body["reasons"] == []
    assert body["paused"] == []
    paused = auth_api.client.post(
        "/queue/pause", json={"tool_id": "noop", "reason": "incident"}, headers=ops.headers
    )
    assert paused.status_code == 200, paused.text
    assert auth_api.client.get("/queue/stats", headers=ops.headers).json()["paused"] == ["noop"]
