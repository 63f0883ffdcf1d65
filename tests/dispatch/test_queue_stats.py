"""Queue stats: counts by status and backend, the thread pool's numbers, and a broker that
does not answer reported as down, with why, instead of waited for."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from api.settings import Settings
from backends.base import TaskBackend
from backends.celery_app import make_celery_app
from backends.celery_backend import CeleryBackend
from dispatch.health import HealthCheck
from dispatch.queue_stats import BrokerStats, ThreadPoolStats, queue_stats
from dispatch.rollout.policy import RolloutPolicy
from dispatch.rollout.watch import StaticRollout
from execution.status import TaskStatus
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry
from tests.conftest import ThreadBackendFactory
from tests.helpers import claim, queued_task, wait_until
from tests.integration.servers import free_port
from tests.tools import Gate


@pytest.fixture
def dead_broker(registry: ToolRegistry) -> Iterator[CeleryBackend]:
    """The real Celery backend, pointed at a port where no Redis listens."""
    settings = Settings(_env_file=None, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    backend = CeleryBackend(
        app=make_celery_app(settings, registry), registry=registry, publish_retries=0
    )
    yield backend
    backend.shutdown(timeout=1)


def _check(store: TaskStore, backends: dict[str, TaskBackend]) -> HealthCheck:
    return HealthCheck(
        store=store,
        backends=backends,
        rollout=StaticRollout(RolloutPolicy(use_celery=True, percentage=50, salt="s")),
        worker_absent_seconds=60,
    )


def test_stats_count_tasks_and_show_the_pool_and_a_broker_that_is_down(
    store: TaskStore,
    thread_backends: ThreadBackendFactory,
    gate: Gate,
    dead_broker: CeleryBackend,
) -> None:
    pool = thread_backends(workers=1, capacity=50)
    pool.submit(queued_task(store, tool_id="gate"))
    wait_until(lambda: gate.ran, what="the gate task to hold the only thread")
    for _ in range(2):
        pool.submit(queued_task(store, tool_id="echo"))
    queued_task(store, tool_id="echo", backend="celery")
    ended = queued_task(store, tool_id="noop", backend="celery")
    assert claim(store, ended.task_id) is not None
    assert store.complete(ended.task_id, attempt=1, result={})

    stats = queue_stats(
        _check(store, {"thread": pool, "celery": dead_broker}), store, paused={"report", "echo"}
    )

    assert stats.database == "ok"
    assert stats.tasks == {
        "QUEUED": {"celery": 1, "thread": 2},
        "PROCESSING": {"thread": 1},
        "COMPLETED": {"celery": 1},
        "FAILED": {},
        "CANCELLED": {},
    }
    assert stats.thread_pool == ThreadPoolStats(
        state="ok", workers=1, busy=1, idle=0, waiting=2, capacity=50
    )
    assert stats.backends["thread"]["queued"] == 2
    assert stats.backends["celery"]["queued"] == 1
    assert isinstance(stats.backends["celery"]["oldest_waiting_seconds"], float)
    broker = stats.broker
    assert (broker.state, broker.queues, broker.workers) == ("broker_down", None, [])
    assert broker.address is not None
    assert broker.reason is not None
    assert broker.reason.startswith(f"the broker at {broker.address} does not answer: ")
    assert stats.reasons == ["the celery backend cannot take work (broker_down)"]
    assert stats.paused == ["echo", "report"]


def test_without_celery_in_this_process_the_broker_is_said_to_be_elsewhere(
    store: TaskStore, thread_backends: ThreadBackendFactory
) -> None:
    queued_task(store, tool_id="echo", backend="celery")  # routed by another process

    stats = queue_stats(_check(store, {"thread": thread_backends()}), store, paused=())

    assert stats.broker == BrokerStats(
        state="not_in_this_process",
        reason="this process does not publish to Celery (USE_CELERY=false)",
        address=None,
        queues=None,
    )
    assert stats.backends["celery"] == {
        "state": "not_in_this_process",
        "queued": 1,
        "oldest_waiting_seconds": stats.backends["celery"]["oldest_waiting_seconds"],
    }
    assert stats.tasks[TaskStatus.QUEUED] == {"celery": 1}
