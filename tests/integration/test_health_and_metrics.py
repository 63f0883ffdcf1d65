"""Acceptance: metrics move on both backends, and /health tells when Celery work will not run.

A real Redis, a real two-process worker serving its own /metrics, and the API in-process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.runtime import Runtime
from api.settings import Settings
from tests.helpers import operator_client, wait_until
from tests.integration.servers import RedisServer, free_port
from tests.integration.workers import WorkerProcess, start_worker

pytestmark = pytest.mark.integration

ABSENT_BOUND = 2.0
"""CELERY_WORKER_ABSENT_SECONDS in this test: short, so the test does not wait long."""


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(text: str, name: str, **labels: str) -> float:
    return _samples(text).get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def stack(
    redis_server: RedisServer, tmp_path: Path
) -> Iterator[tuple[TestClient, WorkerProcess, int]]:
    """The API at 100 % Celery and a two-process worker with its metrics port."""
    url = f"sqlite:///{tmp_path / 'switchyard.db'}"
    broker = redis_server.url.rsplit("/", 1)[0] + "/6"
    settings = Settings(
        _env_file=None,
        database_url=url,
        redis_url=broker,
        use_celery=True,
        celery_rollout_percentage=100,
        celery_worker_absent_seconds=ABSENT_BOUND,
    )
    runtime = Runtime.build(settings)
    runtime.prepare_database()
    port = free_port()
    worker = start_worker(
        env={"DATABASE_URL": url, "REDIS_URL": broker, "WORKER_METRICS_PORT": str(port)},
        broker_url=broker,
        hostname="metrics@localhost",
        log_path=tmp_path / "worker.log",
        concurrency=2,
    )
    try:
        with operator_client(runtime) as client:
            yield client, worker, port
    finally:
        worker.stop()


def _run_all(client: TestClient, tasks: list[tuple[str, dict[str, Any]]]) -> None:
    ids = [
        client.post("/tasks", json={"tool_id": tool, "payload": payload}).json()["task_id"]
        for tool, payload in tasks
    ]

    def ended() -> bool:
        statuses = [client.get(f"/tasks/{task_id}").json()["status"] for task_id in ids]
        return all(status in {"COMPLETED", "FAILED"} for status in statuses)

    wait_until(ended, what=f"{len(ids)} tasks to end", timeout=60)


def test_worker_metrics_sum_every_child_and_the_api_counts_its_decisions(
    stack: tuple[TestClient, WorkerProcess, int],
) -> None:
    client, worker, port = stack
    # Sleeps long enough that both children run at once: the count is whole only if the
    # main process sums its children's files.
    _run_all(
        client,
        [("sleep", {"seconds": 0.3})] * 4 + [("noop", {})] * 6 + [("fail", {"message": "x"})],
    )

    worker_metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    # The API's worker count comes from a ping in the background: the first scrape may be
    # answered before it is back
    api_metrics = wait_until(
        lambda: (
            (text := client.get("/metrics").text)
            and _value(text, "switchyard_celery_workers") == 1
            and text
        ),
        what="the API to count the worker",
    )

    celery = {"backend": "celery"}
    assert (
        _value(
            worker_metrics, "switchyard_tasks_total", tool="sleep", outcome="completed", **celery
        )
        == 4
    )
    assert (
        _value(worker_metrics, "switchyard_tasks_total", tool="noop", outcome="completed", **celery)
        == 6
    )
    assert (
        _value(worker_metrics, "switchyard_tasks_total", tool="fail", outcome="failed", **celery)
        == 1
    )
    assert _value(worker_metrics, "switchyard_task_run_seconds_count", tool="sleep", **celery) == 4
    assert _value(worker_metrics, "switchyard_task_run_seconds_sum", tool="sleep", **celery) >= 1.2
    assert (
        _value(worker_metrics, "switchyard_task_queue_wait_seconds_count", tool="noop", **celery)
        == 6
    )
    assert (
        _value(api_metrics, "switchyard_dispatch_decisions_total", reason="bucket", **celery) == 11
    )
    assert _value(api_metrics, "switchyard_rollout_percentage") == 100
    assert "worker.metrics_serving" in worker.log()


def test_health_is_503_within_the_bound_once_the_last_worker_stops(
    stack: tuple[TestClient, WorkerProcess, int],
) -> None:
    client, worker, _ = stack
    healthy = wait_until(
        lambda: (
            (r := client.get("/health")).status_code == 200
            and r.json()["backends"]["celery"]["workers"] == 1
            and r.json()
        ),
        what="the worker to answer the health ping",
    )
    assert healthy["backends"]["celery"]["state"] == "ok"
    assert healthy["detail"]["celery"]["workers"] == ["metrics@localhost"]

    worker.stop()
    degraded = wait_until(
        lambda: (r := client.get("/health")).status_code == 503 and r.json(),
        what="/health to turn 503",
        timeout=ABSENT_BOUND + 15,
    )
    assert degraded["reasons"] == [
        f"the rollout sends tasks to Celery and no worker has answered for "
        f"{degraded['backends']['celery']['workers_absent_seconds']:.0f} s "
        f"(CELERY_WORKER_ABSENT_SECONDS={ABSENT_BOUND:g})"
    ]
    assert degraded["backends"]["celery"]["state"] == "no_workers"

    # A task sent now waits in Redis: /health counts it in its queue and in the rows
    client.post("/tasks", json={"tool_id": "noop"}).raise_for_status()
    waiting = wait_until(
        lambda: (
            (body := client.get("/health").json())["backends"]["celery"]["queues"]["default"] == 1
            and body
        ),
        what="the waiting message to be counted",
    )
    assert waiting["backends"]["celery"]["queued"] == 1
    assert waiting["backends"]["celery"]["oldest_waiting_seconds"] >= 0
    anonymous = client.get("/health", headers={"Authorization": ""}).json()
    assert "detail" not in anonymous
    assert "127.0.0.1" not in str(anonymous)
