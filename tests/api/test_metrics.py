"""/metrics of the API process, read with prometheus-client's own parser."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.keys import Role
from api.runtime import Runtime
from api.settings import Settings
from execution.tools.registry import ToolRegistry
from tests.helpers import operator_client, wait_until

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient) -> Samples:
    """Every sample of /metrics, by name and labels."""
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 for a labelled counter not yet created."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def served(settings: Settings, registry: ToolRegistry) -> Iterator[TestClient]:
    """Wired as `switchyard serve` does: the real thread pool."""
    runtime = Runtime.build(settings, registry=registry)
    runtime.prepare_database()
    with operator_client(runtime) as client:
        yield client


def _run(client: TestClient, tool_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    task_id = client.post("/tasks", json={"tool_id": tool_id, "payload": payload}).json()["task_id"]

    def ended() -> dict[str, Any] | None:
        task: dict[str, Any] = client.get(f"/tasks/{task_id}").json()
        return task if task["status"] in {"COMPLETED", "FAILED"} else None

    return wait_until(ended, what=f"{tool_id} task to end")


def test_metrics_need_an_operator_key(served: TestClient) -> None:
    runtime: Runtime = served.app.state.runtime  # type: ignore[attr-defined]
    user = runtime.keys.create(user_id="alice", role=Role.USER)

    assert served.get("/metrics", headers={"Authorization": ""}).status_code == 401
    as_user = served.get("/metrics", headers={"Authorization": f"Bearer {user.token}"})
    assert as_user.status_code == 403


def test_task_counters_and_histograms_move_as_tasks_run_on_threads(served: TestClient) -> None:
    before = scrape(served)
    for _ in range(3):
        assert _run(served, "noop", {})["status"] == "COMPLETED"
    assert _run(served, "fail", {"message": "boom"})["status"] == "FAILED"

    after = scrape(served)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    thread_noop = {"backend": "thread", "tool": "noop"}
    assert moved("switchyard_tasks_total", outcome="completed", **thread_noop) == 3
    assert moved("switchyard_tasks_total", backend="thread", tool="fail", outcome="failed") == 1
    assert moved("switchyard_task_run_seconds_count", **thread_noop) == 3
    assert moved("switchyard_task_queue_wait_seconds_count", **thread_noop) == 3
    assert value(after, "switchyard_task_run_seconds_sum", **thread_noop) > 0
    # USE_CELERY is false in these settings: every decision says so
    assert moved("switchyard_dispatch_decisions_total", backend="thread", reason="switch_off") == 4


def test_gauges_show_queue_depth_health_and_the_rollout_in_force(served: TestClient) -> None:
    samples = scrape(served)

    assert value(samples, "switchyard_tasks_queued", backend="thread") == 0
    assert value(samples, "switchyard_backend_up", backend="thread") == 1
    assert value(samples, "switchyard_healthy") == 1
    assert value(samples, "switchyard_thread_pool_workers") > 0
    assert value(samples, "switchyard_rollout_use_celery") == 0
    assert value(samples, "switchyard_rollout_percentage") == 0
    assert value(samples, "switchyard_rollout_version") == 1


def test_every_metric_has_help_text_and_the_switchyard_prefix(served: TestClient) -> None:
    _run(served, "noop", {})
    families = list(text_string_to_metric_families(served.get("/metrics").text))

    assert families
    assert all(family.name.startswith("switchyard_") for family in families)
    assert all(family.documentation for family in families)


def test_the_batches_of_a_parallel_job_are_counted_by_outcome(served: TestClient) -> None:
    job = _run(served, "squares", {"n": 3, "flaky": {"1": 1}})

    samples = scrape(served)

    assert job["status"] == "COMPLETED"
    labels = {"backend": "thread", "tool": "squares"}
    assert value(samples, "switchyard_batches_total", **labels, outcome="completed") == 3
    assert value(samples, "switchyard_batches_total", **labels, outcome="retrying") == 1
    assert value(samples, "switchyard_tasks_total", **labels, outcome="completed") == 1
