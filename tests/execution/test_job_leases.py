"""Job leases: one process of the deployment runs a periodic job per interval, whichever."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from execution.database import make_engine
from execution.job_leases import JobLeases
from tests.dispatch.rollout.cohort_rows import Clock
from tests.execution.lease_race import EVERY, LEASE, race

JOB = "test-job"


@pytest.fixture
def clock() -> Clock:
    """The time the leases read; it moves only when the test says."""
    return Clock(datetime(2026, 11, 30, 9, 0, tzinfo=UTC))


@pytest.fixture
def leases(engine: Engine, clock: Clock) -> JobLeases:
    """Leases over this test's database."""
    return JobLeases(engine, clock=clock)


def take(leases: JobLeases, owner: str) -> bool:
    return leases.take_due(JOB, owner=owner, every=EVERY, lease_seconds=LEASE)


def test_a_job_never_run_is_taken_by_the_first_to_ask_and_by_nobody_else(
    leases: JobLeases,
) -> None:
    assert take(leases, "a")
    assert not take(leases, "b")


def test_after_a_run_nobody_runs_it_again_until_the_interval_has_passed(
    leases: JobLeases, clock: Clock
) -> None:
    assert take(leases, "a")
    leases.finish(JOB, owner="a", ran=True)

    clock.advance(EVERY - 1)
    assert not take(leases, "a")
    assert not take(leases, "b")
    clock.advance(1)
    assert take(leases, "b")
    assert leases.last_run(JOB) == clock.now - timedelta(seconds=EVERY)


def test_a_lease_whose_holder_died_is_taken_over_once_it_expires(
    leases: JobLeases, clock: Clock
) -> None:
    assert take(leases, "dies-while-running")

    clock.advance(LEASE - 1)
    assert not take(leases, "b")
    clock.advance(1)
    assert take(leases, "b")
    assert not leases.renew(JOB, owner="dies-while-running", lease_seconds=LEASE)
    assert leases.renew(JOB, owner="b", lease_seconds=LEASE)


def test_a_run_that_failed_gives_the_job_back_to_be_run_at_the_next_check(
    leases: JobLeases,
) -> None:
    assert take(leases, "a")
    leases.finish(JOB, owner="a", ran=False)

    assert take(leases, "b")
    assert leases.last_run(JOB) is None


def test_a_holder_renewing_keeps_the_job_past_its_first_lease(
    leases: JobLeases, clock: Clock
) -> None:
    assert take(leases, "a")
    clock.advance(LEASE - 1)
    assert leases.renew(JOB, owner="a", lease_seconds=LEASE)
    clock.advance(LEASE - 1)

    assert not take(leases, "b")


@pytest.fixture
def contenders(database_url: str, engine: Engine, clock: Clock) -> Iterator[list[JobLeases]]:
    """Eight processes' leases over one SQLite file, each with its own engine."""
    engines = [make_engine(database_url) for _ in range(8)]
    yield [JobLeases(each, clock=clock) for each in engines]
    for each in engines:
        each.dispose()


def test_processes_racing_for_the_job_run_it_exactly_once_per_interval(
    contenders: list[JobLeases], clock: Clock
) -> None:
    assert len(race(contenders)) == 1
    assert race(contenders) == []

    clock.advance(EVERY)
    assert len(race(contenders)) == 1
