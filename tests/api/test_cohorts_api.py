"""GET /rollout/cohorts and POST /rollout/advance: operators only, figures, refusals, audit."""

from __future__ import annotations

import pytest

from api.keys import Role
from dispatch.rollout.control import RolloutChange
from tests.api.conftest import ApiUnderTest, BuildApi, Keyholder
from tests.dispatch.rollout.cohort_rows import Clock, cohort_of, install_clock
from tests.helpers import wait_until


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Rows, rollout changes and the route's `now` on a clock the test moves."""
    return install_clock(monkeypatch)


@pytest.fixture
def api(build_api: BuildApi, clock: Clock) -> ApiUnderTest:
    """The app, its rollout seeded at 0 % on the test's clock; judged from 3 samples."""
    return build_api(rollout_min_samples=3)


@pytest.fixture
def ops(api: ApiUnderTest) -> Keyholder:
    """An operator."""
    return api.issue("ops-oncall", Role.OPERATOR)


def set_to(api: ApiUnderTest, percentage: float, clock: Clock) -> None:
    """An operator's change to `percentage`, a second after and before the tasks around it."""
    clock.advance(1)
    state = api.runtime.rollout.store.load()
    assert state is not None
    api.runtime.rollout_control.set(
        RolloutChange(percentage=percentage),
        actor="ops-oncall",
        reason="set by the test",
        expected_version=state.version,
    )
    clock.advance(1)


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/rollout/cohorts"), ("POST", "/rollout/advance")]
)
def test_cohorts_and_advance_need_an_operator_key(
    api: ApiUnderTest, method: str, path: str
) -> None:
    user = api.issue("alice")
    body = {"reason": "x"} if method == "POST" else None

    anonymous = api.client.request(method, path, json=body)
    as_user = api.client.request(method, path, json=body, headers=user.headers)

    assert anonymous.status_code == 401
    assert as_user.status_code == 403
    assert as_user.json() == {"detail": "this needs an operator key"}


def test_cohorts_count_since_the_last_change_unless_a_window_is_asked(
    api: ApiUnderTest, ops: Keyholder, clock: Clock
) -> None:
    store = api.runtime.store
    cohort_of(store, clock, backend="celery", completed=0, failed=2)
    set_to(api, 5, clock)
    cohort_of(store, clock, backend="celery", completed=3)
    cohort_of(store, clock, backend="thread", completed=2)
    clock.advance(1)

    since_change = api.client.get("/rollout/cohorts", headers=ops.headers)
    windowed = api.client.get(
        "/rollout/cohorts", params={"window_seconds": 3600}, headers=ops.headers
    )

    assert since_change.status_code == 200
    body = since_change.json()
    assert body["basis"] == "since the last rollout change (version 2, by ops-oncall)"
    assert [(c["backend"], c["samples"], c["enough"]) for c in body["backends"]] == [
        ("thread", 2, False),
        ("celery", 3, True),
    ]
    assert body["backends"][1]["failure_rate"] == 0
    assert body["capped"] is False
    celery = windowed.json()["backends"][1]
    assert (celery["samples"], celery["failed"], celery["failure_rate"]) == (5, 2, 40.0)
    assert windowed.json()["basis"] == "over the last 3600 s"


def test_cohorts_of_one_tool(api: ApiUnderTest, ops: Keyholder, clock: Clock) -> None:
    cohort_of(api.runtime.store, clock, backend="thread", completed=2)
    clock.advance(1)

    sleep = api.client.get("/rollout/cohorts", params={"tool_id": "sleep"}, headers=ops.headers)
    noop = api.client.get("/rollout/cohorts", params={"tool_id": "noop"}, headers=ops.headers)

    assert sleep.json()["backends"] == []
    assert [(c["tool_id"], c["samples"]) for c in noop.json()["tools"]] == [("noop", 2)]


def test_the_first_advance_takes_the_first_step_and_is_in_history_as_an_advance(
    api: ApiUnderTest, ops: Keyholder
) -> None:
    response = api.client.post("/rollout/advance", json={"reason": "step 1"}, headers=ops.headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["from_percentage"], body["to_percentage"], body["checks"]) == (0, 5, [])
    assert body["rollout"]["percentage"] == 5
    (event, *_) = api.client.get("/rollout/history", headers=ops.headers).json()
    assert (event["action"], event["actor"]) == ("advance", "ops-oncall")
    assert event["reason"].startswith("step 1 [advance 0% -> 5%")


def test_a_refused_advance_is_409_with_every_check_and_changes_nothing(
    api: ApiUnderTest, ops: Keyholder, clock: Clock
) -> None:
    set_to(api, 5, clock)
    cohort_of(api.runtime.store, clock, backend="celery", completed=2, failed=1)
    cohort_of(api.runtime.store, clock, backend="thread", completed=3)

    response = api.client.post("/rollout/advance", json={"reason": "step 2"}, headers=ops.headers)

    assert response.status_code == 409
    body = response.json()
    assert body["detail"].startswith("not advancing from 5% to 25%: failed failure_rate")
    assert [(c["name"], c["passed"]) for c in body["checks"]] == [
        ("samples", True),
        ("failure_rate", False),
        ("p95_run_time", True),
    ]
    assert "celery 33.33% vs threads 0.00%" in body["checks"][1]["detail"]
    assert api.client.get("/rollout", headers=ops.headers).json()["percentage"] == 5


def test_a_forced_advance_moves_on_and_its_history_names_the_failed_checks(
    api: ApiUnderTest, ops: Keyholder, clock: Clock
) -> None:
    set_to(api, 5, clock)

    response = api.client.post(
        "/rollout/advance",
        json={"reason": "soaked in staging", "force": True},
        headers=ops.headers,
    )

    assert response.status_code == 200, response.text
    assert response.json()["forced"] is True
    assert response.json()["rollout"]["percentage"] == 25
    (event, *_) = api.client.get("/rollout/history", headers=ops.headers).json()
    assert event["action"] == "advance"
    assert "forced: samples FAILED: celery 0, threads 0 (min 3 each)" in event["reason"]


def test_at_100_percent_an_advance_is_409_saying_there_is_no_step_left(
    api: ApiUnderTest, ops: Keyholder, clock: Clock
) -> None:
    set_to(api, 100, clock)

    response = api.client.post(
        "/rollout/advance", json={"reason": "more", "force": True}, headers=ops.headers
    )

    assert response.status_code == 409
    assert "nothing to advance to" in response.json()["detail"]
    assert response.json()["checks"] == []


def test_an_advance_needs_a_reason(api: ApiUnderTest, ops: Keyholder) -> None:
    response = api.client.post("/rollout/advance", json={"force": True}, headers=ops.headers)

    assert response.status_code == 422
    assert "reason" in response.json()["detail"]


def test_advances_count_towards_the_per_key_change_limit(build_api: BuildApi, clock: Clock) -> None:
    api = build_api(rollout_change_limit=1)
    ops = api.issue("ops-oncall", Role.OPERATOR)

    first = api.client.post("/rollout/advance", json={"reason": "one"}, headers=ops.headers)
    second = api.client.post(
        "/rollout/advance", json={"reason": "two", "force": True}, headers=ops.headers
    )

    assert first.status_code == 200
    assert second.status_code == 429
    assert int(second.headers["Retry-After"]) >= 1


def test_the_api_runs_no_guard_unless_switched_on(api: ApiUnderTest) -> None:
    assert api.runtime.guard is None


def test_the_switched_on_guard_of_the_api_process_rolls_back_a_breach_by_itself(
    build_api: BuildApi, clock: Clock
) -> None:
    api = build_api(rollout_guard=True, rollout_guard_interval_seconds=0.1, rollout_min_samples=3)
    set_to(api, 25, clock)
    cohort_of(api.runtime.store, clock, backend="celery", completed=1, failed=2)
    cohort_of(api.runtime.store, clock, backend="thread", completed=3)

    def rolled_back() -> bool:
        state = api.runtime.rollout.store.load()
        return state is not None and state.percentage == 0

    wait_until(rolled_back, what="the guard's rollback")
    (event, *_) = api.runtime.rollout_control.history(limit=1, offset=0)
    assert (event.action, event.actor) == ("rollback", "guard")
    assert "celery failure rate 66.67% vs threads 0.00%" in event.reason
