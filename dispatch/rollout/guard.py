"""The optional guard (ROLLOUT_GUARD=true): rolls back by itself when Celery fails too often.

Every ROLLOUT_GUARD_INTERVAL_SECONDS it compares the cohorts since the last rollout change. When
both backends hold ROLLOUT_MIN_SAMPLES finished tasks and Celery's failure rate is more than
ROLLOUT_MAX_FAILURE_DELTA points above the threads', it rolls back (actor "guard", the figures
in the reason). It judges nothing while no tool is routed to Celery (so it rolls back once, not
again while rolled back) or while either cohort is too small: at 100 % there is no thread
cohort, so the guard stays idle there. Every API process runs one; two that see the same breach
at once may both roll back, which changes nothing the first one did not.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import structlog
from sqlalchemy import Engine

from dispatch.rollout.advance import Thresholds, failure_rate_check
from dispatch.rollout.cohorts import read_cohorts
from dispatch.rollout.control import RolloutControl
from dispatch.rollout.store import RolloutStore
from execution.status import BackendName

log = structlog.get_logger(__name__)

ACTOR = "guard"
"""Who the history says rolled back."""


@dataclass(frozen=True, slots=True)
class Breach:
    """A rollback the guard made, and why."""

    reason: str


class RolloutGuard:
    """A background thread that watches the Celery cohort and rolls back on a breach."""

    def __init__(
        self,
        *,
        control: RolloutControl,
        rollouts: RolloutStore,
        engine: Engine,
        limits: Thresholds,
        interval: float,
    ) -> None:
        self._control = control
        self._rollouts = rollouts
        self._engine = engine
        self._limits = limits
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Begin checking every `interval` seconds."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="switchyard-rollout-guard", daemon=True
            )
            self._thread.start()
            log.info("rollout.guard_started", interval=self._interval)

    def stop(self) -> None:
        """Stop checking (a check under way finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 5)
            self._thread = None

    def check(self) -> Breach | None:
        """One look at the cohorts since the last change; roll back if Celery breaches."""
        state = self._rollouts.load()
        if state is None or (state.percentage == 0 and not any(state.tool_overrides.values())):
            return None  # nothing routed to Celery: never started, or already rolled back
        report = read_cohorts(
            self._engine, since=state.updated_at, min_samples=self._limits.min_samples
        )
        celery = report.backend(BackendName.CELERY)
        threads = report.backend(BackendName.THREAD)
        if not (celery.enough and threads.enough):
            log.debug(
                "rollout.guard_too_few_samples", celery=celery.samples, threads=threads.samples
            )
            return None
        verdict = failure_rate_check(celery, threads, self._limits)
        if verdict.passed:
            return None
        reason = (
            f"guard: celery failure rate {celery.failure_rate:.2f}% vs threads "
            f"{threads.failure_rate:.2f}% over {celery.samples} celery and {threads.samples} "
            f"thread tasks since {state.updated_at:%Y-%m-%d %H:%M:%S} UTC "
            f"(max +{self._limits.max_failure_delta:g} points)"
        )
        self._control.rollback(actor=ACTOR, reason=reason)
        log.warning(
            "rollout.guard_rolled_back",
            version=state.version,
            celery_failure_rate=celery.failure_rate,
            thread_failure_rate=threads.failure_rate,
            celery_samples=celery.samples,
            thread_samples=threads.samples,
        )
        return Breach(reason=reason)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check()
            except Exception as exc:  # a database hiccup must not end the guard
                log.warning("rollout.guard_failed", error=f"{type(exc).__name__}: {exc}")
