"""The guard over real rows: a Celery failure breach rolls back once, with the figures."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from dispatch.rollout.advance import Thresholds
from dispatch.rollout.control import RolloutChange, RolloutControl
from dispatch.rollout.guard import RolloutGuard
from dispatch.rollout.state import RolloutAction
from dispatch.rollout.store import RolloutStore
from execution.store import TaskStore
from tests.dispatch.rollout.cohort_rows import Clock, cohort_of
from tests.helpers import wait_until

LIMITS = Thresholds(max_failure_delta=0.1, max_p95_ratio=1.2, min_samples=10)


@pytest.fixture
def guard(control: RolloutControl, rollouts: RolloutStore, engine: Engine) -> RolloutGuard:
    """A guard that checks when the test calls `check` (not started)."""
    return RolloutGuard(
        control=control, rollouts=rollouts, engine=engine, limits=LIMITS, interval=30
    )


@pytest.fixture
def at_25(control: RolloutControl, rollouts: RolloutStore, clock: Clock) -> None:
    """The rollout at 25 %, set a second before the tasks the test writes."""
    control.set(RolloutChange(percentage=25), actor="ops", reason="step 2", expected_version=1)
    clock.advance(1)


@pytest.mark.usefixtures("at_25")
def test_a_celery_failure_breach_rolls_back_with_the_figures(
    guard: RolloutGuard,
    control: RolloutControl,
    rollouts: RolloutStore,
    store: TaskStore,
    clock: Clock,
) -> None:
    cohort_of(store, clock, backend="celery", completed=9, failed=1)
    cohort_of(store, clock, backend="thread", completed=20)

    breach = guard.check()

    assert breach is not None
    state = rollouts.load()
    assert state is not None
    assert state.percentage == 0
    (event, *_) = control.history(limit=1, offset=0)
    assert event.action is RolloutAction.ROLLBACK
    assert event.actor == "guard"
    assert event.reason.startswith(
        "guard: celery failure rate 10.00% vs threads 0.00% over 10 celery and 20 thread tasks"
    )


@pytest.mark.usefixtures("at_25")
def test_the_guard_rolls_back_once_not_again_while_rolled_back(
    guard: RolloutGuard, control: RolloutControl, store: TaskStore, clock: Clock
) -> None:
    cohort_of(store, clock, backend="celery", completed=5, failed=5)
    cohort_of(store, clock, backend="thread", completed=20)
    assert guard.check() is not None
    cohort_of(store, clock, backend="celery", completed=0, failed=10)  # still finishing
    cohort_of(store, clock, backend="thread", completed=20)

    assert guard.check() is None
    assert [e.action for e in control.history(limit=10, offset=0)].count(
        RolloutAction.ROLLBACK
    ) == 1


@pytest.mark.usefixtures("at_25")
def test_no_breach_changes_nothing(
    guard: RolloutGuard, rollouts: RolloutStore, store: TaskStore, clock: Clock
) -> None:
    cohort_of(store, clock, backend="celery", completed=20, failed=1)  # 4.76 %
    cohort_of(store, clock, backend="thread", completed=19, failed=1)  # 5.00 %
    before = rollouts.load()

    assert guard.check() is None
    assert rollouts.load() == before


@pytest.mark.usefixtures("at_25")
@pytest.mark.parametrize(("celery", "threads"), [(9, 20), (20, 9)])
def test_too_few_samples_on_either_backend_changes_nothing(
    guard: RolloutGuard,
    rollouts: RolloutStore,
    store: TaskStore,
    clock: Clock,
    celery: int,
    threads: int,
) -> None:
    cohort_of(store, clock, backend="celery", completed=0, failed=celery)
    cohort_of(store, clock, backend="thread", completed=threads)
    before = rollouts.load()

    assert guard.check() is None
    assert rollouts.load() == before


def test_failures_before_the_last_change_are_not_held_against_it(
    guard: RolloutGuard,
    control: RolloutControl,
    rollouts: RolloutStore,
    store: TaskStore,
    clock: Clock,
) -> None:
    cohort_of(store, clock, backend="celery", completed=0, failed=20)
    cohort_of(store, clock, backend="thread", completed=20)
    clock.advance(1)
    control.set(RolloutChange(percentage=25), actor="ops", reason="fixed", expected_version=1)

    assert guard.check() is None


@pytest.mark.usefixtures("at_25")
def test_the_started_guard_rolls_back_by_itself(
    control: RolloutControl, rollouts: RolloutStore, engine: Engine, store: TaskStore, clock: Clock
) -> None:
    cohort_of(store, clock, backend="celery", completed=0, failed=10)
    cohort_of(store, clock, backend="thread", completed=10)
    guard = RolloutGuard(
        control=control, rollouts=rollouts, engine=engine, limits=LIMITS, interval=0.1
    )
    guard.start()
    try:
        wait_until(
            lambda: (state := rollouts.load()) is not None and state.percentage == 0,
            what="the guard's rollback",
        )
    finally:
        guard.stop()
    (event, *_) = control.history(limit=1, offset=0)
    assert event.actor == "guard"
