"""Pause and resume as rollout changes: stored, audited, never rate limited, untouched by a
rollback or restore, kept across a restart, and refused where they would mislead."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dispatch.rollout.control import RolloutChange, RolloutControl, RolloutInvalid
from dispatch.rollout.pause import ResumeRefused
from dispatch.rollout.policy import RolloutPolicy
from dispatch.rollout.state import RolloutAction
from dispatch.rollout.store import ChangeLimit, RolloutStore
from dispatch.rollout.watch import RolloutWatcher
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry


@pytest.fixture
def limited(
    rollouts: RolloutStore, registry: ToolRegistry, store: TaskStore
) -> Iterator[RolloutControl]:
    """A control allowing one limited change per key per hour."""
    watcher = RolloutWatcher(rollouts, use_celery=True, seed_percentage=0, salt="s", interval=5)
    watcher.start()
    yield RolloutControl(
        watcher=watcher,
        registry=registry,
        tasks=store,
        limit=ChangeLimit(changes=1, window_seconds=3600),
    )
    watcher.stop()


def test_a_pause_is_stored_bumps_the_version_and_is_in_force_at_once(
    control: RolloutControl, rollouts: RolloutStore
) -> None:
    state = control.pause(tool_id="sleep", actor="ops", reason="deploy of sleep")

    assert (state.version, state.paused) == (2, frozenset({"sleep"}))
    stored = rollouts.load()
    assert stored is not None
    assert (stored.paused, stored.source) == (frozenset({"sleep"}), RolloutAction.PAUSE)
    assert control.history(limit=1, offset=0)[0].action is RolloutAction.PAUSE


def test_the_audit_shows_the_paused_tools_before_and_after(control: RolloutControl) -> None:
    control.pause(tool_id="sleep", actor="ops", reason="deploy")
    control.pause(tool_id="noop", actor="ops", reason="incident")
    control.resume(tool_id="sleep", actor="carol", reason="deployed")

    resumed, paused, _ = control.history(limit=3, offset=0)
    assert (resumed.action, resumed.actor, resumed.reason) == (
        RolloutAction.RESUME,
        "carol",
        "deployed",
    )
    assert resumed.before is not None
    assert paused.before is not None
    assert (resumed.before["paused"], resumed.after["paused"]) == (["noop", "sleep"], ["noop"])
    assert (paused.before["paused"], paused.after["paused"]) == (["sleep"], ["noop", "sleep"])
    assert resumed.after["percentage"] == 0  # the routing is still recorded beside it


def test_pausing_all_covers_every_tool_and_resuming_all_clears_every_pause(
    control: RolloutControl,
) -> None:
    control.pause(tool_id="sleep", actor="ops", reason="deploy")
    everything = control.pause(tool_id=None, actor="ops", reason="incident")
    assert everything.paused == frozenset({"*"})
    policy = everything.policy(use_celery=True)
    assert policy.is_paused("sleep")
    assert policy.is_paused("noop")

    resumed = control.resume(tool_id=None, actor="ops", reason="over").state
    assert resumed.paused == frozenset()
    assert not resumed.policy(use_celery=True).is_paused("sleep")


def test_one_tool_cannot_resume_while_every_tool_is_paused(control: RolloutControl) -> None:
    paused = control.pause(tool_id=None, actor="ops", reason="incident")

    with pytest.raises(ResumeRefused, match="resume all"):
        control.resume(tool_id="sleep", actor="ops", reason="just this one")

    assert control.history(limit=1, offset=0)[0].version == paused.version  # nothing written


def test_an_unknown_tool_or_a_missing_reason_is_refused_before_anything_is_written(
    control: RolloutControl, rollouts: RolloutStore
) -> None:
    with pytest.raises(RolloutInvalid, match=r"unknown tool 'nope'; known tools: .*sleep"):
        control.pause(tool_id="nope", actor="ops", reason="typo")
    with pytest.raises(RolloutInvalid, match="unknown tool 'nope'"):
        control.resume(tool_id="nope", actor="ops", reason="typo")
    with pytest.raises(RolloutInvalid, match="reason"):
        control.pause(tool_id=None, actor="ops", reason="  ")

    assert rollouts.version() == 1


def test_pausing_what_is_paused_and_resuming_what_is_not_write_nothing(
    control: RolloutControl, rollouts: RolloutStore
) -> None:
    control.pause(tool_id=None, actor="ops", reason="incident")

    control.pause(tool_id="sleep", actor="ops", reason="covered by all")
    control.pause(tool_id=None, actor="ops", reason="again")
    control.resume(tool_id=None, actor="ops", reason="over")
    control.resume(tool_id=None, actor="ops", reason="over, again")

    assert rollouts.version() == 3
    assert [e.action for e in control.history(limit=5, offset=0)] == [
        RolloutAction.RESUME,
        RolloutAction.PAUSE,
        RolloutAction.SEED,
    ]


def test_pause_and_resume_are_never_refused_by_the_change_limit(limited: RolloutControl) -> None:
    limited.set(
        RolloutChange(percentage=5), actor="ops", reason="step", expected_version=1, key_id="k"
    )

    for tool_id in ("sleep", "noop", None):
        limited.pause(tool_id=tool_id, actor="ops", reason="incident", key_id="k")
    state = limited.resume(tool_id=None, actor="ops", reason="over", key_id="k").state

    assert state.paused == frozenset()
    assert state.version == 6


def test_a_rollback_and_a_restore_neither_pause_nor_resume(control: RolloutControl) -> None:
    control.set(RolloutChange(percentage=40), actor="ops", reason="step", expected_version=1)
    control.pause(tool_id="sleep", actor="ops", reason="deploy")

    rolled = control.rollback(actor="ops", reason="errors").state
    assert (rolled.percentage, rolled.paused) == (0, frozenset({"sleep"}))
    assert rolled.restore_point is not None
    assert "paused" not in rolled.restore_point

    # A pause during the rollback keeps where restore returns to.
    during = control.pause(tool_id="noop", actor="ops", reason="incident")
    assert during.restore_point == rolled.restore_point

    restored = control.restore(actor="ops", reason="fixed")
    assert (restored.percentage, restored.paused) == (40, frozenset({"sleep", "noop"}))


def test_a_pause_survives_a_restart_and_reaches_a_process_that_polls(
    control: RolloutControl, rollouts: RolloutStore
) -> None:
    elsewhere = RolloutWatcher(rollouts, use_celery=False, seed_percentage=0, salt="s", interval=5)
    elsewhere.start()
    try:
        control.pause(tool_id="sleep", actor="ops", reason="deploy")
        assert not elsewhere.current().is_paused("sleep")  # not polled yet
        elsewhere.refresh()
        assert elsewhere.current().is_paused("sleep")
    finally:
        elsewhere.stop()

    # A new process starting with the same environment keeps the stored pause.
    restarted = RolloutWatcher(rollouts, use_celery=True, seed_percentage=0, salt="s", interval=5)
    restarted.start()
    try:
        assert restarted.current().paused == frozenset({"sleep"})
    finally:
        restarted.stop()


def test_the_policy_describes_a_pause() -> None:
    policy = RolloutPolicy(use_celery=True, percentage=10, salt="s", paused=frozenset({"b", "a"}))
    assert policy.describe().endswith(
        "; dispatch is PAUSED for a, b: their new tasks wait QUEUED until resumed"
    )
    everything = RolloutPolicy(use_celery=False, percentage=0, salt="s", paused=frozenset("*"))
    assert "PAUSED for every tool" in everything.describe()
    assert not RolloutPolicy(use_celery=True, percentage=0, salt="s").is_paused("a")
