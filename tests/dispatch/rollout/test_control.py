"""Operator changes: validated whole, audited, rollback remembers, restore returns."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from dispatch.rollout.control import RolloutChange, RolloutControl, RolloutInvalid
from dispatch.rollout.policy import Stickiness
from dispatch.rollout.state import RolloutAction
from dispatch.rollout.store import NothingToRestore, RolloutConflict, RolloutStore
from dispatch.rollout.watch import RolloutWatcher
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry
from tests.helpers import queued_task


@pytest.fixture
def rollout_store(engine: Engine) -> RolloutStore:
    """Seeded at 5 %."""
    store = RolloutStore(engine)
    store.apply_environment(percentage=5, salt="s")
    return store


@pytest.fixture
def watcher(rollout_store: RolloutStore) -> Iterator[RolloutWatcher]:
    """This process's view of the rollout."""
    watcher = RolloutWatcher(
        rollout_store, use_celery=True, seed_percentage=5, salt="s", interval=5
    )
    watcher.start()
    yield watcher
    watcher.stop()


@pytest.fixture
def control(watcher: RolloutWatcher, registry: ToolRegistry, store: TaskStore) -> RolloutControl:
    """The control over this test's database."""
    return RolloutControl(watcher=watcher, registry=registry, tasks=store)


def test_a_change_is_honoured_in_this_process_at_once(
    control: RolloutControl, watcher: RolloutWatcher
) -> None:
    control.set(RolloutChange(percentage=25), actor="ops", reason="step", expected_version=1)
    assert watcher.current().percentage == 25


def test_fields_left_out_stay_as_they_were(control: RolloutControl) -> None:
    control.set(
        RolloutChange(tool_overrides={"sleep": 100}, stickiness=Stickiness.USER_ID),
        actor="ops",
        reason="by job type",
        expected_version=1,
    )
    state = control.set(
        RolloutChange(percentage=50), actor="ops", reason="half", expected_version=2
    )
    assert dict(state.tool_overrides) == {"sleep": 100}
    assert state.stickiness is Stickiness.USER_ID


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        (RolloutChange(percentage=150), "r", "percentage"),
        (RolloutChange(percentage=-1), "r", "percentage"),
        (RolloutChange(percentage=float("nan")), "r", "percentage"),
        (RolloutChange(tool_overrides={"no-such-tool": 10}), "r", "tool_overrides"),
        (RolloutChange(tool_overrides={"sleep": 101}), "r", "tool_overrides.sleep"),
        (RolloutChange(percentage=10), "   ", "reason"),
    ],
)
def test_a_refused_change_names_the_field_and_writes_nothing(
    control: RolloutControl,
    rollout_store: RolloutStore,
    change: RolloutChange,
    reason: str,
    field: str,
) -> None:
    with pytest.raises(RolloutInvalid) as caught:
        control.set(change, actor="ops", reason=reason, expected_version=1)
    assert caught.value.field == field
    assert rollout_store.version() == 1
    assert len(control.history(limit=10, offset=0)) == 1


def test_a_stale_version_is_a_conflict(control: RolloutControl) -> None:
    control.set(RolloutChange(percentage=25), actor="a", reason="first", expected_version=1)
    with pytest.raises(RolloutConflict):
        control.set(RolloutChange(percentage=50), actor="b", reason="second", expected_version=1)


def test_rollback_sends_everything_to_threads_and_restore_returns(
    control: RolloutControl, watcher: RolloutWatcher
) -> None:
    control.set(
        RolloutChange(percentage=50, tool_overrides={"profile-csv": 100}),
        actor="ops",
        reason="half",
        expected_version=1,
    )
    rolled = control.rollback(actor="oncall", reason="errors up").state
    assert (rolled.percentage, dict(rolled.tool_overrides)) == (0, {})
    assert watcher.current().share_for("profile-csv") == 0
    again = control.rollback(actor="oncall", reason="again, to be sure").state
    assert again.restore_point == rolled.restore_point  # a second rollback keeps the memory
    restored = control.restore(actor="oncall", reason="fixed")
    assert (restored.percentage, dict(restored.tool_overrides)) == (50, {"profile-csv": 100})
    assert restored.restore_point is None
    actions = [e.action for e in control.history(limit=10, offset=0)]
    assert actions == [
        RolloutAction.RESTORE,
        RolloutAction.ROLLBACK,
        RolloutAction.ROLLBACK,
        RolloutAction.SET,
        RolloutAction.SEED,
    ]


def test_restore_without_a_rollback_is_refused(control: RolloutControl) -> None:
    with pytest.raises(NothingToRestore):
        control.restore(actor="ops", reason="nothing to restore")


def test_a_setting_after_a_rollback_drops_the_restore_point(control: RolloutControl) -> None:
    control.rollback(actor="ops", reason="drill")
    state = control.set(
        RolloutChange(percentage=10), actor="ops", reason="fresh start", expected_version=2
    )
    assert state.restore_point is None


def test_preview_counts_moving_traffic_and_queued_tasks(
    control: RolloutControl, store: TaskStore
) -> None:
    for _ in range(3):
        queued_task(store, backend="celery")
    queued_task(store, backend="thread")
    up = control.preview(30)
    assert (up.current_percentage, up.new_traffic_moving, up.direction) == (5, 25, "to celery")
    assert dict(up.queued) == {"celery": 3, "thread": 1}
    assert up.queued_that_would_move == 0
    down = control.preview(0)
    assert (down.direction, down.queued_that_would_move) == ("to threads", 3)
    with pytest.raises(RolloutInvalid):
        control.preview(101)
