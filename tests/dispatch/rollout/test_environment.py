"""The environment and the stored rollout agree predictably: new values are adopted once, as
an audited change; the values last adopted leave runtime changes in force; values adopted
once and since replaced (an old process in a rolling deploy) change nothing."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
from sqlalchemy import Engine
from structlog.testing import capture_logs

from dispatch.rollout.state import RolloutAction
from dispatch.rollout.store import EnvironmentOutcome, RolloutStore
from dispatch.rollout.watch import RolloutWatcher


@pytest.fixture
def rollout_store(engine: Engine) -> RolloutStore:
    """An empty rollout store: nothing seeded yet."""
    return RolloutStore(engine)


def operator_sets(store: RolloutStore, percentage: float) -> None:
    store.change(
        lambda state: (replace(state, percentage=percentage), None),
        action=RolloutAction.SET,
        actor="carol",
        reason="runtime change",
        expected_version=None,
    )


def test_the_first_start_seeds_and_the_same_environment_then_changes_nothing(
    rollout_store: RolloutStore,
) -> None:
    first = rollout_store.apply_environment(percentage=5, salt="s")
    assert (first.outcome, first.state.percentage, first.state.version) == (
        EnvironmentOutcome.SEEDED,
        5,
        1,
    )
    again = rollout_store.apply_environment(percentage=5, salt="s")
    assert (again.outcome, again.state.version) == (EnvironmentOutcome.UNCHANGED, 1)


def test_an_unchanged_environment_leaves_runtime_changes_in_force(
    rollout_store: RolloutStore,
) -> None:
    rollout_store.apply_environment(percentage=5, salt="s")
    operator_sets(rollout_store, 40)
    restart = rollout_store.apply_environment(percentage=5, salt="s")
    assert restart.outcome is EnvironmentOutcome.UNCHANGED
    assert (restart.state.percentage, restart.state.source) == (40, RolloutAction.SET)


def test_a_changed_environment_is_adopted_as_an_audited_change_by_environment(
    rollout_store: RolloutStore,
) -> None:
    rollout_store.apply_environment(percentage=5, salt="s")
    operator_sets(rollout_store, 40)
    deploy = rollout_store.apply_environment(percentage=25, salt="s")
    assert deploy.outcome is EnvironmentOutcome.ADOPTED
    assert (deploy.state.percentage, deploy.state.source, deploy.state.updated_by) == (
        25,
        RolloutAction.ENVIRONMENT,
        "environment",
    )
    (event, *_) = rollout_store.history(limit=1, offset=0)
    assert (event.action, event.actor) == (RolloutAction.ENVIRONMENT, "environment")
    assert event.before is not None
    assert (event.before["percentage"], event.after["percentage"]) == (40, 25)
    assert "CELERY_ROLLOUT_PERCENTAGE changed from 5 to 25" in event.reason


def test_a_new_salt_alone_is_adopted_and_rebuckets(rollout_store: RolloutStore) -> None:
    rollout_store.apply_environment(percentage=5, salt="s")
    changed = rollout_store.apply_environment(percentage=5, salt="pepper")
    assert changed.outcome is EnvironmentOutcome.ADOPTED
    assert changed.state.salt == "pepper"
    assert "ROLLOUT_SALT changed" in rollout_store.history(limit=1, offset=0)[0].reason


def test_a_rolling_deploy_never_flip_flops_back_to_the_old_value(
    rollout_store: RolloutStore,
) -> None:
    """Old processes (5 %) and new ones (25 %) start in any order, an old one late."""
    rollout_store.apply_environment(percentage=5, salt="s")  # the old deploy
    outcomes = [
        rollout_store.apply_environment(percentage=percentage, salt="s").outcome
        for percentage in (25, 5, 25, 5, 5, 25)
    ]
    assert outcomes == [
        EnvironmentOutcome.ADOPTED,
        EnvironmentOutcome.STALE,
        EnvironmentOutcome.UNCHANGED,
        EnvironmentOutcome.STALE,
        EnvironmentOutcome.STALE,
        EnvironmentOutcome.UNCHANGED,
    ]
    state = rollout_store.load()
    assert state is not None
    assert (state.percentage, state.version) == (25, 2)  # one adoption, no flip back


def test_many_processes_starting_at_once_with_new_values_adopt_them_once(
    rollout_store: RolloutStore,
) -> None:
    rollout_store.apply_environment(percentage=5, salt="s")
    start = threading.Barrier(6)
    outcomes: list[EnvironmentOutcome] = []

    def process() -> None:
        start.wait()
        outcomes.append(rollout_store.apply_environment(percentage=50, salt="s").outcome)

    threads = [threading.Thread(target=process) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(EnvironmentOutcome.ADOPTED) == 1
    assert outcomes.count(EnvironmentOutcome.UNCHANGED) == 5
    adoptions = [e for e in rollout_store.history(limit=20, offset=0) if e.action == "environment"]
    assert len(adoptions) == 1


def test_during_a_rollback_a_new_value_only_moves_the_restore_point(
    rollout_store: RolloutStore,
) -> None:
    rollout_store.apply_environment(percentage=25, salt="s")
    rollout_store.change(
        lambda state: (replace(state, percentage=0.0), state.routing()),
        action=RolloutAction.ROLLBACK,
        actor="oncall",
        reason="incident",
        expected_version=None,
    )
    deploy = rollout_store.apply_environment(percentage=50, salt="s")
    assert deploy.outcome is EnvironmentOutcome.ADOPTED
    assert deploy.state.percentage == 0  # the rollback stays in force
    assert deploy.state.restore_point is not None
    assert deploy.state.restore_point["percentage"] == 50  # restore goes to the new value


def test_a_watcher_applies_its_environment_once_and_says_what_it_did(
    rollout_store: RolloutStore,
) -> None:
    rollout_store.apply_environment(percentage=5, salt="s")
    operator_sets(rollout_store, 30)
    watcher = RolloutWatcher(
        rollout_store, use_celery=True, seed_percentage=5, salt="s", interval=5
    )
    applied = watcher.apply_environment()
    watcher.start()  # does not apply it a second time
    try:
        assert watcher.environment is applied
        assert applied.outcome is EnvironmentOutcome.UNCHANGED
        assert watcher.current().percentage == 30
    finally:
        watcher.stop()


def test_a_worker_never_applies_its_environment(rollout_store: RolloutStore) -> None:
    rollout_store.apply_environment(percentage=5, salt="s")
    worker = RolloutWatcher(
        rollout_store, use_celery=True, seed_percentage=90, salt="s", interval=5, seed=False
    )
    worker.start()
    try:
        assert worker.environment is None
        assert worker.current().percentage == 5
    finally:
        worker.stop()


def test_an_old_process_restarting_late_warns_that_its_value_is_ignored(
    rollout_store: RolloutStore,
) -> None:
    rollout_store.apply_environment(percentage=5, salt="s")
    rollout_store.apply_environment(percentage=25, salt="s")
    late = RolloutWatcher(rollout_store, use_celery=True, seed_percentage=5, salt="s", interval=5)
    with capture_logs() as logs:
        applied = late.apply_environment()
    assert applied.outcome is EnvironmentOutcome.STALE
    assert late.current().percentage == 25
    (stale,) = [e for e in logs if e["event"] == "rollout.environment_stale"]
    assert (stale["log_level"], stale["environment_percentage"], stale["percentage"]) == (
        "warning",
        5,
        25,
    )


def test_a_process_whose_environment_sets_nothing_leaves_the_rollout_alone(
    rollout_store: RolloutStore,
) -> None:
    """A process on the defaults (say, one with USE_CELERY=false and nothing else) must not
    pull the fleet to 0 %."""
    rollout_store.apply_environment(percentage=100, salt="s")
    quiet = rollout_store.apply_environment(
        percentage=0, salt="switchyard", percentage_set=False, salt_set=False
    )
    assert (quiet.outcome, quiet.percentage, quiet.state.percentage) == (
        EnvironmentOutcome.NOT_SET,
        None,
        100,
    )


def test_only_what_the_environment_sets_is_compared_and_adopted(
    rollout_store: RolloutStore,
) -> None:
    rollout_store.apply_environment(percentage=5, salt="s")
    operator_sets(rollout_store, 40)
    same_salt = rollout_store.apply_environment(percentage=0, salt="s", percentage_set=False)
    assert (same_salt.outcome, same_salt.state.percentage) == (EnvironmentOutcome.UNCHANGED, 40)
    new_salt = rollout_store.apply_environment(percentage=0, salt="pepper", percentage_set=False)
    assert new_salt.outcome is EnvironmentOutcome.ADOPTED
    assert (new_salt.state.percentage, new_salt.state.salt) == (40, "pepper")
    new_share = rollout_store.apply_environment(percentage=25, salt="x", salt_set=False)
    assert new_share.outcome is EnvironmentOutcome.ADOPTED
    assert (new_share.state.percentage, new_share.state.salt) == (25, "pepper")
