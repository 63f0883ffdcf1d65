"""Fixtures of the rollout tests: a clock the store reads, a rollout seeded at 0 % and its
control (test_control.py has its own, seeded at 5 %)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from dispatch.rollout.control import RolloutControl
from dispatch.rollout.store import RolloutStore
from dispatch.rollout.watch import RolloutWatcher
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry
from tests.dispatch.rollout.cohort_rows import Clock, install_clock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Task rows and rollout changes stamped with a time the test moves."""
    return install_clock(monkeypatch)


@pytest.fixture
def rollouts(engine: Engine, clock: Clock) -> RolloutStore:
    """Seeded at 0 %."""
    store = RolloutStore(engine)
    store.apply_environment(percentage=0, salt="s")
    return store


@pytest.fixture
def control(
    rollouts: RolloutStore, registry: ToolRegistry, store: TaskStore
) -> Iterator[RolloutControl]:
    """The control over this test's database."""
    watcher = RolloutWatcher(rollouts, use_celery=True, seed_percentage=0, salt="s", interval=5)
    watcher.start()
    yield RolloutControl(watcher=watcher, registry=registry, tasks=store)
    watcher.stop()
