"""Every process keeps the rollout in memory and polls one cheap version read to stay current."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from dispatch.rollout.policy import RolloutPolicy
from dispatch.rollout.state import RolloutState
from dispatch.rollout.store import EnvironmentApplied, EnvironmentOutcome, RolloutStore

log = structlog.get_logger(__name__)


class RolloutSource(Protocol):
    """Where the dispatcher reads the rollout from; `current()` must not touch the database."""

    def current(self) -> RolloutPolicy: ...


@dataclass(frozen=True, slots=True)
class StaticRollout:
    """A rollout that never changes (tests, benchmarks)."""

    policy: RolloutPolicy

    def current(self) -> RolloutPolicy:
        """The policy, unchanged."""
        return self.policy


class RolloutWatcher:
    """A `RolloutSource` whose `current()` costs no database round trip.

    A background thread reads the state's version every `interval` seconds and reloads the
    state when it moved, so a change made anywhere is honoured here within about `interval`
    plus one query. If the database cannot be read, routing keeps the last known state.
    """

    def __init__(
        self,
        store: RolloutStore,
        *,
        use_celery: bool,
        seed_percentage: float,
        salt: str,
        interval: float,
        seed: bool = True,
        percentage_set: bool = True,
        salt_set: bool = True,
    ) -> None:
        self.store = store
        self._seed = seed
        self._percentage_set = percentage_set
        self._salt_set = salt_set
        self._use_celery = use_celery
        self._seed_percentage = seed_percentage
        self._salt = salt
        self._interval = interval
        self._policy = RolloutPolicy(use_celery=use_celery, percentage=0.0, salt=salt)
        self._state: RolloutState | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[RolloutState], None]] = []
        self.environment: EnvironmentApplied | None = None
        """What this process's start did with its environment (None: not applied, a worker)."""

    def start(self) -> None:
        """Apply this process's environment to the stored state (unless told not to: workers
        follow the state the API processes keep), load it, and begin polling."""
        if self._seed:
            self.apply_environment()
        elif (stored := self.store.load()) is not None:
            self._adopt(stored)
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._poll, name="switchyard-rollout-watch", daemon=True
            )
            self._thread.start()

    def apply_environment(self) -> EnvironmentApplied:
        """Seed the state on the first start anywhere, or adopt CELERY_ROLLOUT_PERCENTAGE and
        ROLLOUT_SALT if no process started with them before; once per process."""
        if self.environment is None:
            applied = self.store.apply_environment(
                percentage=self._seed_percentage,
                salt=self._salt,
                percentage_set=self._percentage_set,
                salt_set=self._salt_set,
            )
            self.environment = applied
            fields = {
                "outcome": str(applied.outcome),
                "environment_percentage": applied.percentage,
                "version": applied.state.version,
                "percentage": applied.state.percentage,
            }
            if applied.outcome is EnvironmentOutcome.STALE:
                log.warning("rollout.environment_stale", **fields)
            else:
                log.info("rollout.environment_applied", **fields)
            self._adopt(applied.state)
        return self.environment

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._interval + 5)
            self._thread = None

    def current(self) -> RolloutPolicy:
        """The policy in force in this process (an attribute read)."""
        return self._policy

    def state(self) -> RolloutState | None:
        """The stored state last seen."""
        return self._state

    def adopt(self, state: RolloutState) -> None:
        """Take a state this process just wrote, without waiting for the next poll."""
        self._adopt(state)

    def _adopt(self, state: RolloutState) -> bool:
        """Take `state` unless it is older than the one in force; whether it was new."""
        if self._state is not None and state.version < self._state.version:
            return False  # an older read finishing late must not roll us back
        previous = self._state.version if self._state else None
        self._state = state
        self._policy = state.policy(use_celery=self._use_celery)
        if previous != state.version:
            log.info(
                "rollout.adopted",
                version=state.version,
                percentage=state.percentage,
                overrides=dict(state.tool_overrides),
                stickiness=str(state.stickiness),
                paused=sorted(state.paused),
            )
        return previous != state.version

    def subscribe(self, listener: Callable[[RolloutState], None]) -> None:
        """Call `listener` with each state this process learns of from the database (a change
        made elsewhere), after it is in force here."""
        self._listeners.append(listener)

    def refresh(self) -> None:
        """Catch up with the stored state now (one version read; a reload if it moved): an
        operator reading the rollout from this process must see, and match, the latest."""
        version = self.store.version()
        if version is not None and (self._state is None or version != self._state.version):
            state = self.store.load()
            if state is not None and self._adopt(state):
                for listener in self._listeners:
                    listener(state)

    def _poll(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.refresh()
            except Exception as exc:  # keep routing by the last known state
                log.warning("rollout.poll_failed", error=f"{type(exc).__name__}: {exc}")
