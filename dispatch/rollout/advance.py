"""`rollout advance`: the next step of the schedule, taken only when Celery did no worse.

The Celery cohort is judged against the threads' over the tasks that finished since the last
rollout change (see cohorts.py), by three named checks: enough samples on both backends, a
failure rate at most ROLLOUT_MAX_FAILURE_DELTA points above the threads', and a p95 run time at
most ROLLOUT_MAX_P95_RATIO times the threads'. The first step from 0 % is taken unjudged: no
task ran on Celery yet, so there is nothing to compare. `force` takes the step despite failed
checks and names them in the audit reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from sqlalchemy import Engine

from dispatch.rollout.cohorts import Cohort, CohortReport, read_cohorts
from dispatch.rollout.control import MAX_REASON, RolloutChange, RolloutControl, RolloutInvalid
from dispatch.rollout.settings import RolloutCheckSettings
from dispatch.rollout.state import RolloutAction, RolloutState
from dispatch.rollout.store import RolloutStore
from execution.status import BackendName

log = structlog.get_logger(__name__)

_EPSILON = 1e-9  # 0.2 + 0.1 is 0.30000000000000004: a rate exactly at the limit passes


@dataclass(frozen=True, slots=True)
class Thresholds:
    """How much worse than threads Celery may do, and how many samples judging needs."""

    max_failure_delta: float
    max_p95_ratio: float
    min_samples: int

    @classmethod
    def of(cls, settings: RolloutCheckSettings) -> Thresholds:
        """The thresholds the settings name."""
        return cls(
            max_failure_delta=settings.rollout_max_failure_delta,
            max_p95_ratio=settings.rollout_max_p95_ratio,
            min_samples=settings.rollout_min_samples,
        )


@dataclass(frozen=True, slots=True)
class Check:
    """One named comparison of Celery with threads, its figures in words, and its verdict."""

    name: str
    passed: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.name} {'ok' if self.passed else 'FAILED'}: {self.detail}"


def next_step(schedule: Sequence[float], current: float) -> float | None:
    """The first step above `current`, or None at (or past) the last one."""
    return next((step for step in schedule if step > current), None)


def samples_check(celery: Cohort, threads: Cohort, limits: Thresholds) -> Check:
    """Both cohorts hold enough finished tasks for the other checks to mean something."""
    return Check(
        "samples",
        celery.samples >= limits.min_samples and threads.samples >= limits.min_samples,
        f"celery {celery.samples}, threads {threads.samples} (min {limits.min_samples} each)",
    )


def failure_rate_check(celery: Cohort, threads: Cohort, limits: Thresholds) -> Check:
    """Celery's failure rate is at most `max_failure_delta` points above the threads'."""
    name, delta = "failure_rate", limits.max_failure_delta
    if celery.failure_rate is None or threads.failure_rate is None:
        return Check(name, False, "no finished tasks to compare on one of the backends")
    return Check(
        name,
        celery.failure_rate <= threads.failure_rate + delta + _EPSILON,
        f"celery {celery.failure_rate:.2f}% vs threads {threads.failure_rate:.2f}% "
        f"(max +{delta:g} points)",
    )


def p95_check(celery: Cohort, threads: Cohort, limits: Thresholds) -> Check:
    """Celery's p95 run time is at most `max_p95_ratio` times the threads'."""
    name, ratio = "p95_run_time", limits.max_p95_ratio
    if celery.run_time_p95 is None or threads.run_time_p95 is None:
        return Check(name, False, "no run times to compare on one of the backends")
    return Check(
        name,
        celery.run_time_p95 <= threads.run_time_p95 * ratio + _EPSILON,
        f"celery {celery.run_time_p95:.3g}s vs threads {threads.run_time_p95:.3g}s "
        f"(max {ratio:g}x)",
    )


def judge(report: CohortReport, limits: Thresholds) -> list[Check]:
    """Every check of the Celery cohort against the threads', passed or not."""
    celery = report.backend(BackendName.CELERY)
    threads = report.backend(BackendName.THREAD)
    return [
        check(celery, threads, limits) for check in (samples_check, failure_rate_check, p95_check)
    ]


@dataclass(frozen=True, slots=True)
class AdvanceResult:
    """A step taken: from where to where, on what evidence."""

    from_percentage: float
    to_percentage: float
    checks: Sequence[Check]
    """Empty for the unjudged first step."""
    forced: bool
    """Taken although a check failed."""
    state: RolloutState


class NothingToAdvance(Exception):
    """The rollout is at (or past) the schedule's last step."""


class AdvanceRefused(Exception):
    """A check failed and the advance was not forced; nothing was written."""

    def __init__(self, *, from_percentage: float, to_percentage: float, checks: Sequence[Check]):
        self.from_percentage = from_percentage
        self.to_percentage = to_percentage
        self.checks = tuple(checks)
        failed = ", ".join(check.name for check in self.checks if not check.passed)
        super().__init__(
            f"not advancing from {from_percentage:g}% to {to_percentage:g}%: failed {failed} "
            "(--force overrides, and is recorded)"
        )


class RolloutAdvance:
    """Reads the stored rollout and the cohorts since its last change, checks, then steps."""

    def __init__(
        self,
        *,
        control: RolloutControl,
        rollouts: RolloutStore,
        engine: Engine,
        schedule: Sequence[float],
        limits: Thresholds,
    ) -> None:
        self._control = control
        self._rollouts = rollouts
        self._engine = engine
        self._schedule = tuple(schedule)
        self._limits = limits

    def advance(
        self, *, actor: str, reason: str, force: bool = False, key_id: str | None = None
    ) -> AdvanceResult:
        """Move to the next step if every check passes (or `force`); else AdvanceRefused."""
        reason = reason.strip()
        if not reason:
            raise RolloutInvalid("reason", "a reason is required for every rollout change")
        state = self._rollouts.load()
        if state is None:
            raise LookupError("the rollout state is not seeded yet")
        current = state.percentage
        target = next_step(self._schedule, current)
        if target is None:
            raise NothingToAdvance(
                f"the rollout is at {current:g}%, at or past the schedule's last step "
                f"({self._schedule[-1]:g}%): nothing to advance to"
            )
        checks: list[Check] = []
        if current > 0:
            report = read_cohorts(
                self._engine, since=state.updated_at, min_samples=self._limits.min_samples
            )
            checks = judge(report, self._limits)
        failed = [check for check in checks if not check.passed]
        if failed and not force:
            log.info(
                "rollout.advance_refused",
                actor=actor,
                version=state.version,
                target=target,
                failed=[check.name for check in failed],
            )
            raise AdvanceRefused(from_percentage=current, to_percentage=target, checks=checks)
        trail = f" [advance {current:g}% -> {target:g}%; {_evidence(checks, forced=bool(failed))}]"
        room = MAX_REASON - len(trail)
        if len(reason) > room:
            raise RolloutInvalid("reason", f"at most {room} characters for this advance")
        changed = self._control.set(
            RolloutChange(percentage=target),
            actor=actor,
            reason=reason + trail,
            expected_version=state.version,  # the checks judged this version's cohorts
            key_id=key_id,
            action=RolloutAction.ADVANCE,
        )
        log.info(
            "rollout.advanced",
            actor=actor,
            version=changed.version,
            percentage=target,
            forced=[check.name for check in failed],
        )
        return AdvanceResult(
            from_percentage=current,
            to_percentage=target,
            checks=checks,
            forced=bool(failed),
            state=changed,
        )


def _evidence(checks: Sequence[Check], *, forced: bool) -> str:
    if not checks:
        return "first step from 0%: no Celery cohort to judge"
    return ("forced: " if forced else "") + "; ".join(str(check) for check in checks)
