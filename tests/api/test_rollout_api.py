"""/rollout over HTTP: who may change it, how a change is guarded, and what history shows."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import ApiUnderTest, Keyholder
from tests.helpers import queued_task


def put(api: ApiUnderTest, who: Keyholder, body: dict[str, Any], version: str | None) -> Any:
    """PUT /rollout as `who`, with If-Match unless `version` is None."""
    headers = dict(who.headers)
    if version is not None:
        headers["If-Match"] = version
    return api.client.put("/rollout", json=body, headers=headers)


def test_anyone_with_a_key_reads_the_rollout_with_its_version_as_etag(
    auth_api: ApiUnderTest, alice: Keyholder
) -> None:
    response = auth_api.client.get("/rollout", headers=alice.headers)
    assert response.status_code == 200
    assert response.headers["ETag"] == '"1"'
    assert response.json()["stickiness"] == "task_id"


def test_users_may_not_change_the_rollout_or_read_its_history(
    auth_api: ApiUnderTest, alice: Keyholder
) -> None:
    assert put(auth_api, alice, {"percentage": 5, "reason": "r"}, '"1"').status_code == 403
    body = {"reason": "r"}
    assert (
        auth_api.client.post("/rollout/rollback", json=body, headers=alice.headers).status_code
        == 403
    )
    assert auth_api.client.get("/rollout/history", headers=alice.headers).status_code == 403
    assert (
        auth_api.client.get("/rollout/preview?percentage=5", headers=alice.headers).status_code
        == 403
    )


def test_an_operator_change_is_applied_and_recorded_with_its_author_and_reason(
    auth_api: ApiUnderTest, ops: Keyholder
) -> None:
    response = put(
        auth_api,
        ops,
        {
            "percentage": 25,
            "tool_overrides": {"profile-csv": 100},
            "stickiness": "user_id",
            "reason": "step 2 of the schedule",
        },
        '"1"',
    )
    assert response.status_code == 200, response.text
    assert response.headers["ETag"] == '"2"'
    body = response.json()
    assert (body["percentage"], body["tool_overrides"], body["stickiness"]) == (
        25,
        {"profile-csv": 100},
        "user_id",
    )
    assert body["updated_by"] == "ops-oncall"
    latest = auth_api.client.get("/rollout/history", headers=ops.headers).json()[0]
    assert (latest["version"], latest["action"], latest["actor"], latest["reason"]) == (
        2,
        "set",
        "ops-oncall",
        "step 2 of the schedule",
    )
    assert (latest["before"]["percentage"], latest["after"]["percentage"]) == (0, 25)


def test_a_change_without_if_match_is_428_and_a_stale_one_409(
    auth_api: ApiUnderTest, ops: Keyholder
) -> None:
    assert put(auth_api, ops, {"percentage": 5, "reason": "r"}, None).status_code == 428
    assert put(auth_api, ops, {"percentage": 5, "reason": "first"}, '"1"').status_code == 200
    stale = put(auth_api, ops, {"percentage": 50, "reason": "second"}, '"1"')
    assert stale.status_code == 409
    assert stale.headers["ETag"] == '"2"'


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"percentage": 150, "reason": "r"}, "percentage"),
        ({"percentage": "lots", "reason": "r"}, "percentage"),
        ({"tool_overrides": {"no-such-tool": 5}, "reason": "r"}, "tool_overrides"),
        ({"tool_overrides": {"noop": -1}, "reason": "r"}, "tool_overrides"),
        ({"percentage": 5}, "reason"),
        ({"percentage": 5, "reason": "   "}, "reason"),
        ({"percentage": 5, "reason": "r", "salt": "x"}, "salt"),
    ],
)
def test_a_refused_change_names_the_field_and_leaves_no_trace(
    auth_api: ApiUnderTest, ops: Keyholder, body: dict[str, Any], field: str
) -> None:
    response = put(auth_api, ops, body, '"1"')
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
    assert auth_api.client.get("/rollout", headers=ops.headers).headers["ETag"] == '"1"'
    assert len(auth_api.client.get("/rollout/history", headers=ops.headers).json()) == 1


def test_rollback_then_restore_returns_to_the_same_routing(
    auth_api: ApiUnderTest, ops: Keyholder
) -> None:
    put(
        auth_api, ops, {"percentage": 50, "tool_overrides": {"sleep": 100}, "reason": "half"}, '"1"'
    )
    rolled = auth_api.client.post(
        "/rollout/rollback", json={"reason": "error rate up"}, headers=ops.headers
    ).json()
    assert (rolled["percentage"], rolled["tool_overrides"]) == (0, {})
    assert rolled["restore_point"]["percentage"] == 50
    restored = auth_api.client.post(
        "/rollout/restore", json={"reason": "fixed"}, headers=ops.headers
    ).json()
    assert (restored["percentage"], restored["tool_overrides"]) == (50, {"sleep": 100})
    again = auth_api.client.post("/rollout/restore", json={"reason": "twice"}, headers=ops.headers)
    assert again.status_code == 409


def test_preview_reports_the_traffic_a_percentage_would_move(
    auth_api: ApiUnderTest, ops: Keyholder
) -> None:
    preview = auth_api.client.get("/rollout/preview?percentage=30", headers=ops.headers).json()
    assert (preview["current_percentage"], preview["new_traffic_moving"]) == (0, 30)
    assert preview["direction"] == "to celery"
    assert (
        auth_api.client.get("/rollout/preview?percentage=x", headers=ops.headers).status_code == 422
    )


def test_a_rollback_says_how_many_queued_celery_tasks_it_moved_to_threads(
    auth_api: ApiUnderTest, ops: Keyholder
) -> None:
    # Celery's share first: at 0 % the recovery sweep would hand these back before the rollback.
    version = auth_api.client.get("/rollout", headers=ops.headers).json()["version"]
    assert (
        auth_api.client.put(
            "/rollout",
            json={"percentage": 100, "reason": "all to celery"},
            headers={**ops.headers, "If-Match": f'"{version}"'},
        ).status_code
        == 200
    )
    waiting = [queued_task(auth_api.runtime.store, backend="celery") for _ in range(3)]
    rolled = auth_api.client.post(
        "/rollout/rollback", json={"reason": "workers down"}, headers=ops.headers
    )
    assert rolled.status_code == 200
    assert rolled.json()["reclaimed"] == 3
    assert {auth_api.runtime.store.get(t.task_id).backend for t in waiting} == {"thread"}  # type: ignore[union-attr]
    assert len(auth_api.backend.submitted) == 3  # type: ignore[attr-defined]


def test_a_rollback_of_an_unknown_tool_is_refused_with_the_known_ones(
    auth_api: ApiUnderTest, ops: Keyholder
) -> None:
    refused = auth_api.client.post(
        "/rollout/rollback", json={"reason": "r", "tool_id": "nope"}, headers=ops.headers
    )
    assert refused.status_code == 422
    assert "unknown tool 'nope'" in refused.json()["detail"]
    assert "noop" in refused.json()["detail"]
