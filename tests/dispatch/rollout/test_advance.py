"""`rollout advance`: the schedule, each check, the unjudged first step, the end, and --force."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from dispatch.rollout.advance import (
    AdvanceRefused,
    NothingToAdvance,
    RolloutAdvance,
    Thresholds,
    failure_rate_check,
    next_step,
    p95_check,
    samples_check,
)
from dispatch.rollout.cohorts import Cohort
from dispatch.rollout.control import RolloutChange, RolloutControl
from dispatch.rollout.settings import RolloutCheckSettings, parse_schedule
from dispatch.rollout.state import RolloutAction
from dispatch.rollout.store import RolloutStore
from execution.settings import SettingsError, load
from execution.store import TaskStore
from tests.dispatch.rollout.cohort_rows import Clock, cohort_of

SCHEDULE = (5.0, 25.0, 50.0, 75.0, 100.0)
LIMITS = Thresholds(max_failure_delta=0.1, max_p95_ratio=1.2, min_samples=4)


def cohort(**values: Any) -> Cohort:
    """A cohort with enough samples, no failures and 1 s runs, except for `values`."""
    defaults: dict[str, Any] = {
        "backend": "celery",
        "tool_id": None,
        "completed": 100,
        "failed": 0,
        "cancelled": 0,
        "failure_rate": 0.0,
        "queue_wait_p50": 0.1,
        "queue_wait_p95": 0.2,
        "run_time_p50": 0.5,
        "run_time_p95": 1.0,
        "enough": True,
    }
    return Cohort(**{**defaults, **values})


# -- the schedule -------------------------------------------------------------------------------


def test_the_default_schedule_is_five_steps_to_100(clean_env: None) -> None:
    assert load(RolloutCheckSettings, env_file=None).rollout_steps == SCHEDULE


@pytest.mark.parametrize(
    ("text", "steps"), [("5,25,50,75,100", SCHEDULE), (" 1, 2.5 ,100", (1.0, 2.5, 100.0))]
)
def test_a_schedule_reads_as_ascending_percentages(text: str, steps: tuple[float, ...]) -> None:
    assert parse_schedule(text) == steps


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("25,5,100", "steps must go up"),
        ("5,5,100", "steps must go up"),
        ("5,150", "'150' is not a percentage in 0-100"),
        ("5,half", "'half' is not a percentage"),
        (" , ", "at least one step"),
    ],
)
def test_a_bad_schedule_stops_startup_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, text: str, why: str
) -> None:
    monkeypatch.setenv("ROLLOUT_SCHEDULE", text)

    with pytest.raises(SettingsError) as raised:
        load(RolloutCheckSettings, env_file=None)

    assert "ROLLOUT_SCHEDULE" in str(raised.value)
    assert why in str(raised.value)


@pytest.mark.parametrize(
    ("current", "expected"), [(0, 5), (5, 25), (30, 50), (75, 100), (100, None)]
)
def test_the_next_step_is_the_first_above_the_current_percentage(
    current: float, expected: float | None
) -> None:
    assert next_step(SCHEDULE, current) == expected


# -- the checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("celery", "threads", "passed"),
    [(4, 4, True), (3, 400, False), (400, 3, False)],
)
def test_both_cohorts_need_the_minimum_samples(celery: int, threads: int, passed: bool) -> None:
    check = samples_check(cohort(completed=celery), cohort(completed=threads), LIMITS)

    assert check.passed is passed
    assert check.detail == f"celery {celery}, threads {threads} (min 4 each)"


@pytest.mark.parametrize(
    ("celery_rate", "thread_rate", "passed"),
    [(0.3, 0.2, True), (0.31, 0.2, False), (0.0, 1.0, True), (5.0, 0.0, False)],
)
def test_celery_may_fail_at_most_the_delta_more_often_than_threads(
    celery_rate: float, thread_rate: float, passed: bool
) -> None:
    check = failure_rate_check(
        cohort(failure_rate=celery_rate), cohort(failure_rate=thread_rate), LIMITS
    )

    assert check.passed is passed
    assert f"celery {celery_rate:.2f}% vs threads {thread_rate:.2f}%" in check.detail


def test_a_failure_rate_without_samples_fails_the_check() -> None:
    check = failure_rate_check(cohort(failure_rate=None), cohort(), LIMITS)

    assert not check.passed
    assert "no finished tasks" in check.detail


@pytest.mark.parametrize(
    ("celery_p95", "thread_p95", "passed"),
    [(1.2, 1.0, True), (1.21, 1.0, False), (0.5, 1.0, True), (None, 1.0, False)],
)
def test_celery_p95_run_time_may_be_at_most_the_ratio_of_the_threads(
    celery_p95: float | None, thread_p95: float, passed: bool
) -> None:
    check = p95_check(cohort(run_time_p95=celery_p95), cohort(run_time_p95=thread_p95), LIMITS)

    assert check.passed is passed


# -- advancing over real rows -------------------------------------------------------------------


@pytest.fixture
def advancer(control: RolloutControl, rollouts: RolloutStore, engine: Engine) -> RolloutAdvance:
    """The advance with the default schedule and a 4-sample minimum."""
    return RolloutAdvance(
        control=control, rollouts=rollouts, engine=engine, schedule=SCHEDULE, limits=LIMITS
    )


def at(control: RolloutControl, rollouts: RolloutStore, percentage: float) -> None:
    """Set the rollout to `percentage`, as an operator would."""
    state = rollouts.load()
    assert state is not None
    control.set(
        RolloutChange(percentage=percentage),
        actor="ops",
        reason="test",
        expected_version=state.version,
    )


def test_the_first_step_from_zero_is_taken_unjudged_and_audited_as_an_advance(
    advancer: RolloutAdvance, control: RolloutControl
) -> None:
    result = advancer.advance(actor="ops", reason="step 1")

    assert (result.from_percentage, result.to_percentage) == (0, 5)
    assert result.checks == []
    assert result.state.percentage == 5
    (event, *_) = control.history(limit=1, offset=0)
    assert event.action is RolloutAction.ADVANCE
    assert event.actor == "ops"
    assert event.reason.startswith("step 1 [advance 0% -> 5%; first step from 0%")


def test_an_advance_without_enough_samples_is_refused_and_writes_nothing(
    advancer: RolloutAdvance,
    control: RolloutControl,
    rollouts: RolloutStore,
    store: TaskStore,
    clock: Clock,
) -> None:
    at(control, rollouts, 5)
    clock.advance(1)
    cohort_of(store, clock, backend="celery", completed=3)
    cohort_of(store, clock, backend="thread", completed=40)
    before = rollouts.load()

    with pytest.raises(AdvanceRefused) as refused:
        advancer.advance(actor="ops", reason="step 2")

    assert [(c.name, c.passed) for c in refused.value.checks] == [
        ("samples", False),
        ("failure_rate", True),
        ("p95_run_time", True),
    ]
    assert "failed samples" in str(refused.value)
    assert rollouts.load() == before


def test_a_celery_cohort_as_good_as_threads_advances_to_the_next_step(
    advancer: RolloutAdvance,
    control: RolloutControl,
    rollouts: RolloutStore,
    store: TaskStore,
    clock: Clock,
) -> None:
    at(control, rollouts, 25)
    clock.advance(1)
    cohort_of(store, clock, backend="celery", completed=4, run=1.1)
    cohort_of(store, clock, backend="thread", completed=8, run=1.0)

    result = advancer.advance(actor="ops", reason="step 3")

    assert result.to_percentage == 50
    assert [c.passed for c in result.checks] == [True, True, True]
    assert not result.forced
    (event, *_) = control.history(limit=1, offset=0)
    assert "samples ok: celery 4, threads 8" in event.reason
    assert "failure_rate ok" in event.reason


def test_tasks_finished_before_the_last_change_are_not_judged(
    advancer: RolloutAdvance,
    control: RolloutControl,
    rollouts: RolloutStore,
    store: TaskStore,
    clock: Clock,
) -> None:
    cohort_of(store, clock, backend="celery", completed=10)
    cohort_of(store, clock, backend="thread", completed=10)
    clock.advance(1)
    at(control, rollouts, 5)

    with pytest.raises(AdvanceRefused, match="failed samples"):
        advancer.advance(actor="ops", reason="too soon")


def test_a_forced_advance_names_the_failed_checks_in_its_audit_reason(
    advancer: RolloutAdvance,
    control: RolloutControl,
    rollouts: RolloutStore,
    store: TaskStore,
    clock: Clock,
) -> None:
    at(control, rollouts, 5)
    clock.advance(1)
    cohort_of(store, clock, backend="celery", completed=3, failed=1, run=5.0)
    cohort_of(store, clock, backend="thread", completed=4, run=1.0)

    result = advancer.advance(actor="ops", reason="staging soak instead", force=True)

    assert result.forced
    assert result.to_percentage == 25
    (event, *_) = control.history(limit=1, offset=0)
    assert event.action is RolloutAction.ADVANCE
    assert "[advance 5% -> 25%; forced: samples ok: celery 4, threads 4" in event.reason
    assert "failure_rate FAILED: celery 25.00% vs threads 0.00% (max +0.1 points)" in event.reason
    assert "p95_run_time FAILED: celery 5s vs threads 1s (max 1.2x)" in event.reason


def test_at_the_last_step_there_is_nothing_to_advance(
    advancer: RolloutAdvance, control: RolloutControl, rollouts: RolloutStore
) -> None:
    at(control, rollouts, 100)

    with pytest.raises(NothingToAdvance, match="at 100%"):
        advancer.advance(actor="ops", reason="more", force=True)
