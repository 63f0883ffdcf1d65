"""The router only compares a bucket with the rollout; the master switch overrides it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatch.rollout.policy import RolloutPolicy, bucket, route
from dispatch.rollout.watch import StaticRollout
from execution.status import BackendName


@given(key=st.text(min_size=1), percentage=st.floats(min_value=0, max_value=100))
def test_with_the_master_switch_off_every_task_runs_on_threads(key: str, percentage: float) -> None:
    policy = RolloutPolicy(use_celery=False, percentage=percentage, salt="switchyard")

    decision = route(policy, key)

    assert decision.backend is BackendName.THREAD
    assert decision.percentage == 0.0
    assert policy.effective_percentage == 0.0
    assert decision.bucket == bucket(key, salt="switchyard")


@given(key=st.text(min_size=1))
def test_at_the_ends_of_the_rollout_the_percentage_alone_decides(key: str) -> None:
    none = RolloutPolicy(use_celery=True, percentage=0, salt="switchyard")
    every = RolloutPolicy(use_celery=True, percentage=100, salt="switchyard")

    assert route(none, key).backend is BackendName.THREAD
    assert route(every, key).backend is BackendName.CELERY
    assert route(every, key).percentage == 100


def test_the_bucket_is_compared_with_the_percentage_in_hundredths() -> None:
    # bucket("task-1") is 538 (see the golden table): celery from 5.39 %, threads up to 5.38 %.
    def backend_at(percentage: float) -> BackendName:
        policy = RolloutPolicy(use_celery=True, percentage=percentage, salt="switchyard")
        return route(policy, "task-1").backend

    assert backend_at(5.38) is BackendName.THREAD
    assert backend_at(5.39) is BackendName.CELERY


@pytest.mark.parametrize(
    ("use_celery", "percentage", "explanation"),
    [
        (False, 50, "USE_CELERY is false: every new task runs on the thread backend"),
        (True, 0, "USE_CELERY is true but the percentage is 0: every new task runs on threads"),
        (True, 100, "every new task runs on Celery"),
        (
            True,
            12.5,
            "12.5% of new tasks (a stable hash of the task id) run on Celery, the rest on threads",
        ),
    ],
)
def test_describe_says_what_the_rollout_means_for_a_new_task(
    use_celery: bool, percentage: float, explanation: str
) -> None:
    policy = RolloutPolicy(use_celery=use_celery, percentage=percentage, salt="switchyard")

    assert policy.describe() == explanation


def test_a_static_rollout_always_returns_its_policy() -> None:
    policy = RolloutPolicy(use_celery=True, percentage=5, salt="switchyard")

    assert StaticRollout(policy).current() is policy
