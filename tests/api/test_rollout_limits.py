"""Rollback and restore are never refused; other changes are limited per key, counting only
accepted ones, across every API process sharing the database."""

from __future__ import annotations

from typing import Any

from structlog.testing import capture_logs

from api.keys import Role
from tests.api.conftest import ApiUnderTest, BuildApi, Keyholder


def put_rollout(api: ApiUnderTest, who: Keyholder, percentage: float, **extra: Any) -> Any:
    version = api.client.get("/rollout", headers=who.headers).json()["version"]
    headers = {**who.headers, "If-Match": f'"{version}"'}
    return api.client.put(
        "/rollout", json={"percentage": percentage, "reason": "step", **extra}, headers=headers
    )


def refused_requests(api: ApiUnderTest, who: Keyholder) -> list[int]:
    """A 428 (no If-Match), a 409 (stale If-Match), two 422s (bad value, unknown tool)."""
    body = {"percentage": 5, "reason": "r"}
    stale = {**who.headers, "If-Match": '"1"'}
    version = api.client.get("/rollout", headers=who.headers).json()["version"]
    fresh = {**who.headers, "If-Match": f'"{version}"'}
    return [
        api.client.put("/rollout", json=body, headers=who.headers).status_code,
        api.client.put("/rollout", json=body, headers=stale).status_code,
        api.client.put("/rollout", json={**body, "percentage": 101}, headers=fresh).status_code,
        api.client.put(
            "/rollout", json={**body, "tool_overrides": {"nope": 5}}, headers=fresh
        ).status_code,
    ]


def test_the_limit_refuses_the_next_change_with_retry_after_and_logs_who(
    build_api: BuildApi,
) -> None:
    api = build_api(rollout_change_limit=3, rollout_change_window_seconds=600)
    ops = api.issue("ops", Role.OPERATOR)
    assert [put_rollout(api, ops, p).status_code for p in (5, 10, 15)] == [200, 200, 200]
    with capture_logs() as logs:
        refused = put_rollout(api, ops, 20)
    assert refused.status_code == 429
    assert 590 <= int(refused.headers["Retry-After"]) <= 600
    assert "ROLLOUT_CHANGE_LIMIT" in refused.json()["detail"]
    denied = [e for e in logs if e["event"] == "auth.denied"]
    assert [(d["status"], d["user_id"]) for d in denied] == [(429, "ops")]
    assert api.client.get("/rollout", headers=ops.headers).json()["percentage"] == 15


def test_refused_requests_count_for_nothing(build_api: BuildApi) -> None:
    api = build_api(rollout_change_limit=2)
    ops = api.issue("ops", Role.OPERATOR)
    assert put_rollout(api, ops, 5).status_code == 200
    assert refused_requests(api, ops) == [428, 409, 422, 422]
    assert refused_requests(api, ops) == [428, 409, 422, 422]
    assert put_rollout(api, ops, 10).status_code == 200  # the second accepted change
    assert put_rollout(api, ops, 15).status_code == 429
    assert put_rollout(api, ops, 15).status_code == 429  # a 429 does not push the wait out


def test_rollback_and_restore_succeed_after_any_number_of_changes_and_refusals(
    build_api: BuildApi,
) -> None:
    """The issue's scenario: six accepted changes, the 428/409/422 refusals, then rollback."""
    api = build_api(rollout_change_limit=6)
    ops = api.issue("ops", Role.OPERATOR)
    for percentage in (5, 10, 25, 30, 40, 50):
        assert put_rollout(api, ops, percentage).status_code == 200
    assert refused_requests(api, ops) == [428, 409, 422, 422]
    assert put_rollout(api, ops, 60).status_code == 429
    for _ in range(10):  # drills, back and forth, far past the limit
        back = api.client.post(
            "/rollout/rollback", json={"reason": "emergency"}, headers=ops.headers
        )
        assert back.status_code == 200
        assert back.json()["percentage"] == 0
        restored = api.client.post("/rollout/restore", json={"reason": "over"}, headers=ops.headers)
        assert restored.status_code == 200
        assert restored.json()["percentage"] == 50
    # A stale If-Match on a rollback is ignored: a rollback does not depend on what was read.
    stale = {**ops.headers, "If-Match": '"1"'}
    assert (
        api.client.post(
            "/rollout/rollback", json={"reason": "stale tag"}, headers=stale
        ).status_code
        == 200
    )


def test_the_limit_is_per_key(build_api: BuildApi) -> None:
    api = build_api(rollout_change_limit=1)
    first, second = api.issue("ops", Role.OPERATOR), api.issue("ops", Role.OPERATOR)
    assert put_rollout(api, first, 5).status_code == 200
    assert put_rollout(api, first, 6).status_code == 429
    assert put_rollout(api, second, 7).status_code == 200


def test_two_api_processes_share_one_count(build_api: BuildApi, tmp_path: Any) -> None:
    """Two runtimes over one database, as two API processes are: the count is stored."""
    shared = {"database_url": f"sqlite:///{tmp_path / 'shared.db'}", "rollout_change_limit": 2}
    one = build_api(**shared)
    two = build_api(**shared)
    ops = one.issue("ops", Role.OPERATOR)
    assert put_rollout(one, ops, 5).status_code == 200
    assert put_rollout(two, ops, 10).status_code == 200
    assert put_rollout(one, ops, 15).status_code == 429
    assert put_rollout(two, ops, 15).status_code == 429
