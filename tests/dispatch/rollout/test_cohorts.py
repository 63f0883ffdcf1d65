"""Cohorts over real rows: failure rate, percentiles, enough samples, the range, the cap."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from dispatch.rollout.cohorts import percentiles, read_cohorts
from execution.store import TaskStore
from tests.dispatch.rollout.cohort_rows import Clock, cancelled, cohort_of, finish


def test_the_failure_rate_is_failed_over_finished_with_cancelled_tasks_left_out(
    engine: Engine, store: TaskStore, clock: Clock
) -> None:
    since = clock.now
    cohort_of(store, clock, backend="thread", completed=3, failed=1)
    cancelled(store, clock, backend="thread")

    threads = read_cohorts(engine, since=since, min_samples=1).backend("thread")

    assert (threads.completed, threads.failed, threads.cancelled) == (3, 1, 1)
    assert threads.tasks == 5
    assert threads.samples == 4
    assert threads.failure_rate == pytest.approx(25.0)


def test_run_time_and_queue_wait_percentiles_interpolate_between_the_closest_ranks(
    engine: Engine, store: TaskStore, clock: Clock
) -> None:
    since = clock.now
    for seconds in range(1, 21):  # run times 1 s .. 20 s, queue waits 2 s .. 40 s
        finish(store, clock, backend="celery", wait=2.0 * seconds, run=float(seconds))

    celery = read_cohorts(engine, since=since, min_samples=1).backend("celery")

    # Inclusive method: position (n - 1) * p, so p50 sits between 10 and 11, p95 at 19.05.
    assert celery.run_time_p50 == pytest.approx(10.5)
    assert celery.run_time_p95 == pytest.approx(19.05)
    assert celery.queue_wait_p50 == pytest.approx(21.0)
    assert celery.queue_wait_p95 == pytest.approx(38.1)


@pytest.mark.parametrize(
    ("values", "expected"),
    [([], (None, None)), ([4.0], (4.0, 4.0)), ([3.0, 1.0], (2.0, 2.9))],
)
def test_percentiles_of_few_values(
    values: list[float], expected: tuple[float | None, float | None]
) -> None:
    assert percentiles(values) == pytest.approx(expected)


def test_a_cohort_is_enough_from_the_minimum_number_of_samples(
    engine: Engine, store: TaskStore, clock: Clock
) -> None:
    since = clock.now
    cohort_of(store, clock, backend="celery", completed=2, failed=1)
    cohort_of(store, clock, backend="thread", completed=2)
    cancelled(store, clock, backend="thread")  # a cancel is no sample

    report = read_cohorts(engine, since=since, min_samples=3)

    assert report.backend("celery").enough
    assert not report.backend("thread").enough


def test_only_tasks_that_finished_in_the_range_count(
    engine: Engine, store: TaskStore, clock: Clock
) -> None:
    cohort_of(store, clock, backend="celery", completed=0, failed=4)  # before the change
    change = clock.advance(1)
    cohort_of(store, clock, backend="celery", completed=3)
    until = clock.advance(1)
    cohort_of(store, clock, backend="celery", completed=0, failed=2)  # after the range

    since_change = read_cohorts(engine, since=change, min_samples=1)
    bounded = read_cohorts(engine, since=change, until=until, min_samples=1)

    assert since_change.backend("celery").samples == 5
    assert bounded.backend("celery").samples == 3
    assert bounded.backend("celery").failure_rate == 0


def test_a_backend_without_finished_tasks_is_an_empty_cohort(
    engine: Engine, store: TaskStore, clock: Clock
) -> None:
    since = clock.now
    cohort_of(store, clock, backend="thread", completed=1)

    celery = read_cohorts(engine, since=since, min_samples=1).backend("celery")

    assert celery.samples == 0
    assert celery.failure_rate is None
    assert celery.run_time_p95 is None
    assert not celery.enough


def test_cohorts_are_per_backend_and_per_tool_threads_first(
    engine: Engine, store: TaskStore, clock: Clock
) -> None:
    since = clock.now
    finish(store, clock, backend="celery", tool_id="sleep", failed=True)
    finish(store, clock, backend="celery", tool_id="noop")
    finish(store, clock, backend="thread", tool_id="noop")

    report = read_cohorts(engine, since=since, min_samples=1)
    only_sleep = read_cohorts(engine, since=since, tool_id="sleep", min_samples=1)

    assert [c.backend for c in report.backends] == ["thread", "celery"]
    assert [(c.backend, c.tool_id, c.failure_rate) for c in report.tools] == [
        ("thread", "noop", 0.0),
        ("celery", "noop", 0.0),
        ("celery", "sleep", 100.0),
    ]
    assert [(c.backend, c.samples) for c in only_sleep.backends] == [("celery", 1)]


def test_reading_is_capped_to_the_most_recently_finished_and_says_so(
    engine: Engine, store: TaskStore, clock: Clock
) -> None:
    since = clock.now
    cohort_of(store, clock, backend="celery", completed=0, failed=2)  # the oldest
    cohort_of(store, clock, backend="celery", completed=3)

    capped = read_cohorts(engine, since=since, min_samples=1, cap=3)
    whole = read_cohorts(engine, since=since, min_samples=1, cap=5)

    assert (capped.rows_read, capped.capped) == (3, True)
    assert capped.backend("celery").failure_rate == 0
    assert (whole.rows_read, whole.capped) == (5, False)
    assert whole.backend("celery").failure_rate == pytest.approx(40.0)
