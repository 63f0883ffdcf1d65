"""The guards rollout-changing routes will take: operator only (403), and rate-limited (429)."""

from __future__ import annotations

import threading

import pytest
from fastapi import APIRouter
from structlog.testing import capture_logs

from api.auth import OperatorDep, RolloutChangerDep
from api.keys import Role
from api.ratelimit import SlidingWindowLimiter
from tests.api.conftest import ApiUnderTest, BuildApi


def guarded_routes() -> APIRouter:
    """Stand-ins for PUT /rollout and GET /rollout/history until those exist."""
    router = APIRouter(prefix="/guarded")

    @router.put("/rollout")
    def change(caller: RolloutChangerDep) -> dict[str, str]:
        return {"author": caller.user_id, "key_id": caller.key_id}

    @router.get("/history")
    def history(caller: OperatorDep) -> dict[str, str]:
        return {"reader": caller.user_id}

    return router


@pytest.fixture
def guarded(build_api: BuildApi) -> ApiUnderTest:
    """An app with the stand-in routes; two rollout changes per minute per key."""
    return build_api(routers=(guarded_routes(),), rollout_change_limit=2)


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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


def test_rollout_changes_past_the_limit_get_429_with_retry_after(guarded: ApiUnderTest) -> None:
    operator = guarded.issue("carol", Role.OPERATOR)
    statuses = [
        guarded.client.put("/guarded/rollout", headers=operator.headers).status_code
        for _ in range(3)
    ]
    refused = guarded.client.put("/guarded/rollout", headers=operator.headers)
    assert statuses == [200, 200, 429]
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "ROLLOUT_CHANGE_LIMIT" in refused.json()["detail"]


def test_the_rate_limit_is_counted_per_key(guarded: ApiUnderTest) -> None:
    first = guarded.issue("carol", Role.OPERATOR)
    second = guarded.issue("carol", Role.OPERATOR)
    for _ in range(3):
        guarded.client.put("/guarded/rollout", headers=first.headers)
    assert guarded.client.put("/guarded/rollout", headers=second.headers).status_code == 200


def test_a_user_is_told_403_not_429_however_often_they_try(guarded: ApiUnderTest) -> None:
    user = guarded.issue("alice")
    statuses = {
        guarded.client.put("/guarded/rollout", headers=user.headers).status_code for _ in range(4)
    }
    assert statuses == {403}


def test_reading_operator_routes_is_not_rate_limited(guarded: ApiUnderTest) -> None:
    operator = guarded.issue("carol", Role.OPERATOR)
    statuses = {
        guarded.client.get("/guarded/history", headers=operator.headers).status_code
        for _ in range(5)
    }
    assert statuses == {200}


def test_the_limiter_admits_limit_attempts_then_says_how_long_to_wait() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(limit=2, window=60, clock=clock)
    assert limiter.hit("k") is None
    clock.now += 10
    assert limiter.hit("k") is None
    clock.now += 5
    assert limiter.hit("k") == pytest.approx(45.0)


def test_the_window_slides_so_old_attempts_stop_counting() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(limit=1, window=60, clock=clock)
    limiter.hit("k")
    clock.now += 59.9
    assert limiter.hit("k") is not None
    clock.now += 0.1
    assert limiter.hit("k") is None


def test_a_refused_attempt_does_not_extend_the_wait() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(limit=1, window=60, clock=clock)
    limiter.hit("k")
    for _ in range(5):
        clock.now += 10
        limiter.hit("k")
    clock.now += 10
    assert limiter.hit("k") is None


def test_the_limiter_admits_exactly_limit_attempts_from_many_threads() -> None:
    limiter = SlidingWindowLimiter(limit=100, window=3600)
    admitted: list[bool] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        results = [limiter.hit("shared") is None for _ in range(50)]
        with lock:
            admitted.extend(results)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert admitted.count(True) == 100


@pytest.mark.parametrize(("limit", "window"), [(0, 60.0), (1, 0.0)])
def test_a_limiter_that_admits_nothing_cannot_be_built(limit: int, window: float) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        SlidingWindowLimiter(limit=limit, window=window)
