"""The stored rollout: seeded once, changed only by compare-and-set, every change audited."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from dispatch.rollout.policy import Stickiness
from dispatch.rollout.state import RolloutAction, RolloutState
from dispatch.rollout.store import RolloutConflict, RolloutStore
from dispatch.rollout.watch import RolloutWatcher
from execution.status import BackendName
from tests.helpers import wait_until


@pytest.fixture
def rollout_store(engine: Engine) -> RolloutStore:
    """A rollout store over this test's database, seeded at 5 %."""
    store = RolloutStore(engine)
    store.apply_environment(percentage=5, salt="s")
    return store


def to(percentage: float) -> Any:
    """A transform that sets the percentage."""

    def apply(current: RolloutState) -> tuple[RolloutState, None]:
        return current.with_routing({**current.routing(), "percentage": percentage}), None

    return apply


def test_a_change_bumps_the_version_and_records_who_why_from_and_to(
    rollout_store: RolloutStore,
) -> None:
    state = rollout_store.change(
        to(25), action=RolloutAction.SET, actor="alice", reason="step 2", expected_version=1
    )
    assert (state.version, state.percentage, state.updated_by) == (2, 25, "alice")
    latest = rollout_store.history(limit=1, offset=0)[0]
    assert (latest.version, latest.actor, latest.reason) == (2, "alice", "step 2")
    assert latest.before is not None
    assert (latest.before["percentage"], latest.after["percentage"]) == (5, 25)


def test_a_writer_holding_an_old_version_gets_a_conflict_and_writes_nothing(
    rollout_store: RolloutStore,
) -> None:
    rollout_store.change(
        to(25), action=RolloutAction.SET, actor="alice", reason="first", expected_version=1
    )
    with pytest.raises(RolloutConflict) as caught:
        rollout_store.change(
            to(50), action=RolloutAction.SET, actor="bob", reason="late", expected_version=1
        )
    assert (caught.value.expected, caught.value.current) == (1, 2)
    state = rollout_store.load()
    assert state is not None
    assert state.percentage == 25
    assert rollout_store.history(limit=1, offset=0)[0].reason == "first"


def test_concurrent_writers_on_the_same_version_never_both_win(
    rollout_store: RolloutStore,
) -> None:
    outcomes: list[str] = []
    start = threading.Barrier(4)

    def write(percentage: float) -> None:
        start.wait()
        try:
            rollout_store.change(
                to(percentage),
                action=RolloutAction.SET,
                actor="x",
                reason="race",
                expected_version=1,
            )
            outcomes.append("won")
        except RolloutConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=write, args=(p,)) for p in (10, 20, 30, 40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict", "conflict", "conflict", "won"]
    assert len(rollout_store.history(limit=10, offset=0)) == 2


def test_the_policy_applies_overrides_and_the_master_switch(rollout_store: RolloutStore) -> None:
    def apply(current: RolloutState) -> tuple[RolloutState, None]:
        routing = {"percentage": 5, "tool_overrides": {"sleep": 100}, "stickiness": "user_id"}
        return current.with_routing(routing), None

    state = rollout_store.change(
        apply, action=RolloutAction.SET, actor="a", reason="r", expected_version=None
    )
    on, off = state.policy(use_celery=True), state.policy(use_celery=False)
    assert (on.share_for("sleep"), on.share_for("noop")) == (100, 5)
    assert (off.share_for("sleep"), off.share_for("noop")) == (0, 0)
    assert on.stickiness is Stickiness.USER_ID
    assert on.hand_back_to("noop") is None
    assert off.hand_back_to("sleep") is BackendName.THREAD


@pytest.fixture
def watcher(rollout_store: RolloutStore) -> Iterator[RolloutWatcher]:
    """A watcher polling every 50 ms, started with the environment already applied."""
    rollout_store.change(
        to(40), action=RolloutAction.SET, actor="ops", reason="r", expected_version=None
    )
    watcher = RolloutWatcher(
        rollout_store, use_celery=True, seed_percentage=5, salt="s", interval=0.05
    )
    watcher.start()
    yield watcher
    watcher.stop()


def test_a_watcher_starts_from_the_stored_state_when_its_environment_was_applied_before(
    watcher: RolloutWatcher,
) -> None:
    assert (watcher.current().percentage, watcher.current().version) == (40, 2)


def test_a_watcher_picks_up_a_change_made_elsewhere(
    watcher: RolloutWatcher, engine: Engine
) -> None:
    elsewhere = RolloutStore(engine)
    elsewhere.change(
        to(75), action=RolloutAction.SET, actor="ops", reason="r", expected_version=None
    )
    wait_until(lambda: watcher.current().percentage == 75, what="the watcher to see 75 %")
    assert watcher.current().version == 3


def test_a_watcher_never_goes_back_to_an_older_version(
    watcher: RolloutWatcher, rollout_store: RolloutStore
) -> None:
    old = rollout_store.load()
    newer = rollout_store.change(
        to(30), action=RolloutAction.SET, actor="a", reason="r", expected_version=None
    )
    watcher.adopt(newer)
    assert old is not None
    watcher.adopt(old)
    assert watcher.current().percentage == 30
