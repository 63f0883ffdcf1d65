"""The guard rollout routes take: operator only (403), logged. The change limit (429) is the
rollout store's: tests/api/test_rollout_limits.py."""

from __future__ import annotations

import pytest
from fastapi import APIRouter
from structlog.testing import capture_logs

from api.auth import OperatorDep
from api.keys import Role
from tests.api.conftest import ApiUnderTest, BuildApi


def guarded_routes() -> APIRouter:
    """Stand-ins for PUT /rollout and GET /rollout/history until those exist."""
    router = APIRouter(prefix="/guarded")

    @router.put("/rollout")
    def change(caller: OperatorDep) -> dict[str, str]:
        return {"author": caller.user_id, "key_id": caller.key_id}

    @router.get("/history")
    def history(caller: OperatorDep) -> dict[str, str]:
        return {"reader": caller.user_id}

    return router


@pytest.fixture
def guarded(build_api: BuildApi) -> ApiUnderTest:
    """An app with the stand-in routes."""
    return build_api(routers=(guarded_routes(),))


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/guarded/history"), ("PUT", "/guarded/rollout")]
)
def test_a_user_key_gets_403_from_operator_routes_and_it_is_logged(
    guarded: ApiUnderTest, method: str, path: str
) -> None:
    user = guarded.issue("alice")
    with capture_logs() as logs:
        response = guarded.client.request(method, path, headers=user.headers)
    assert response.status_code == 403
    assert response.json()["detail"] == "this needs an operator key"
    denied = [e for e in logs if e["event"] == "auth.denied"]
    assert [(d["status"], d["user_id"], d["path"]) for d in denied] == [(403, "alice", path)]


def test_operator_routes_still_want_a_key_first(guarded: ApiUnderTest) -> None:
    assert guarded.client.get("/guarded/history").status_code == 401


def test_an_operator_passes_and_the_route_learns_who_acted(guarded: ApiUnderTest) -> None:
    operator = guarded.issue("carol", Role.OPERATOR)
    response = guarded.client.put("/guarded/rollout", headers=operator.headers)
    assert response.json() == {"author": "carol", "key_id": operator.key_id}


def test_a_user_is_told_403_however_often_they_try(guarded: ApiUnderTest) -> None:
    user = guarded.issue("alice")
    statuses = {
        guarded.client.put("/guarded/rollout", headers=user.headers).status_code for _ in range(4)
    }
    assert statuses == {403}
