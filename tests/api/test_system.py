"""/rollout, /health, /tools and the OpenAPI docs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from api.runtime import Runtime
from api.settings import Settings
from backends.base import BackendHealth, TaskBackend
from backends.testing import InlineBackend, RecordingBackend
from execution.executor import TaskExecutor
from execution.store import TaskStore
from execution.tools.registry import ToolRegistry
from tests.helpers import operator_client


class UnhealthyBackend(RecordingBackend):
    """A backend that says it cannot take work."""

    def health(self) -> BackendHealth:
        return BackendHealth(
            ok=False, state="broker_down", detail={"broker": "redis://secret-host:6379/0"}
        )


@contextmanager
def _serving(
    settings: Settings, registry: ToolRegistry, backends: dict[str, TaskBackend]
) -> Iterator[TestClient]:
    runtime = Runtime.build(settings, backends=backends, registry=registry)
    with operator_client(runtime) as client:
        yield client


def test_rollout_with_celery_off_explains_that_everything_runs_on_threads(
    client: TestClient,
) -> None:
    response = client.get("/rollout")
    body = response.json()
    assert {k: body[k] for k in ("use_celery", "percentage", "effective_percentage")} == {
        "use_celery": False,
        "percentage": 0.0,
        "effective_percentage": 0.0,
    }
    assert body["explanation"] == "USE_CELERY is false: every new task runs on the thread backend"
    assert response.headers["ETag"] == f'"{body["version"]}"'
    assert (body["version"], body["updated_by"], body["restore_point"]) == (1, "environment", None)


def test_rollout_shows_the_percentage_in_force(
    settings: Settings, registry: ToolRegistry, executor: TaskExecutor
) -> None:
    rolled = settings.model_copy(update={"use_celery": True, "celery_rollout_percentage": 12.5})
    backends: dict[str, TaskBackend] = {
        "thread": InlineBackend(executor),
        "celery": RecordingBackend(name="celery"),
    }

    with _serving(rolled, registry, backends) as client:
        body = client.get("/rollout").json()

    assert (body["use_celery"], body["percentage"], body["effective_percentage"]) == (
        True,
        12.5,
        12.5,
    )
    assert body["explanation"].startswith("12.5% of new tasks")


def test_a_task_routed_to_celery_is_recorded_for_celery(
    settings: Settings, registry: ToolRegistry, executor: TaskExecutor
) -> None:
    everything = settings.model_copy(update={"use_celery": True, "celery_rollout_percentage": 100})
    celery = RecordingBackend(name="celery")

    with _serving(everything, registry, {"thread": InlineBackend(executor), "celery": celery}) as c:
        response = c.post("/tasks", json={"tool_id": "noop"})

    assert response.status_code == 201
    task = response.json()
    assert (task["status"], task["backend"], task["rollout_percentage"]) == (
        "QUEUED",
        "celery",
        100.0,
    )
    assert [t.task_id for t in celery.submitted] == [task["task_id"]]


def test_a_task_routed_to_a_missing_celery_backend_is_503_and_not_created(
    settings: Settings, registry: ToolRegistry, executor: TaskExecutor
) -> None:
    everything = settings.model_copy(update={"use_celery": True, "celery_rollout_percentage": 100})

    with _serving(everything, registry, {"thread": InlineBackend(executor)}) as client:
        response = client.post("/tasks", json={"tool_id": "noop"})
        listed = client.get("/tasks").json()["items"]

    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert "celery backend" in response.json()["detail"]
    assert listed == []


def test_health_is_ok_when_the_database_and_every_backend_are(client: TestClient) -> None:
    response = client.get("/health")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "reasons": [],
        "database": "ok",
        "backends": {
            "thread": {"ok": True, "state": "ok", "queued": 0, "oldest_waiting_seconds": None}
        },
        "detail": {},
    }


def test_health_is_503_degraded_when_a_backend_is_not_and_only_an_operator_sees_why(
    settings: Settings, registry: ToolRegistry, executor: TaskExecutor
) -> None:
    backends: dict[str, TaskBackend] = {
        "thread": InlineBackend(executor),
        "celery": UnhealthyBackend(name="celery"),
    }

    with _serving(settings, registry, backends) as client:
        as_operator = client.get("/health")
        anonymous = client.get("/health", headers={"Authorization": ""})
        bad_key = client.get("/health", headers={"Authorization": "Bearer sy_nope_nope"})

    assert as_operator.status_code == anonymous.status_code == bad_key.status_code == 503
    body = as_operator.json()
    assert body["status"] == "degraded"
    assert body["reasons"] == ["the celery backend cannot take work (broker_down)"]
    assert body["backends"]["celery"] == {
        "ok": False,
        "state": "broker_down",
        "queued": 0,
        "oldest_waiting_seconds": None,
    }
    assert body["detail"] == {"celery": {"broker": "redis://secret-host:6379/0"}}
    # Without an operator key: states and counts, never an address
    assert "detail" not in anonymous.json()
    assert "secret-host" not in anonymous.text
    assert bad_key.json() == anonymous.json()


class NoWorkers(RecordingBackend):
    """A Celery backend whose broker answers but no worker has, for `absent` seconds."""

    def __init__(self, absent: float) -> None:
        super().__init__(name="celery")
        self.absent = absent

    def health(self) -> BackendHealth:
        return BackendHealth(
            ok=True,
            state="no_workers",
            counts={"workers": 0, "workers_absent_seconds": self.absent, "queues": {}},
        )


def test_health_is_degraded_when_the_rollout_sends_tasks_to_celery_and_no_worker_answers(
    settings: Settings, registry: ToolRegistry, executor: TaskExecutor
) -> None:
    celery = NoWorkers(absent=5.0)
    rolled = settings.model_copy(
        update={
            "use_celery": True,
            "celery_rollout_percentage": 25.0,
            "celery_worker_absent_seconds": 10.0,
        }
    )
    with _serving(rolled, registry, {"thread": InlineBackend(executor), "celery": celery}) as c:
        within_bound = c.get("/health")
        celery.absent = 10.0
        past_bound = c.get("/health")
        c.post("/rollout/rollback", json={"reason": "test"}).raise_for_status()
        rolled_back = c.get("/health")

    assert within_bound.status_code == 200
    assert past_bound.status_code == 503
    assert past_bound.json()["reasons"] == [
        "the rollout sends tasks to Celery and no worker has answered for 10 s "
        "(CELERY_WORKER_ABSENT_SECONDS=10)"
    ]
    assert past_bound.json()["backends"]["celery"]["workers"] == 0
    # Nothing goes to Celery any more: no worker is needed
    assert rolled_back.status_code == 200


def test_health_counts_waiting_tasks_and_the_oldest_wait_per_backend(
    settings: Settings, registry: ToolRegistry, store: TaskStore
) -> None:
    recording = RecordingBackend(name="thread")  # takes tasks, never runs them
    with _serving(settings, registry, {"thread": recording}) as client:
        for _ in range(3):
            client.post("/tasks", json={"tool_id": "noop", "payload": {}}).raise_for_status()
        thread = client.get("/health").json()["backends"]["thread"]

    assert thread["queued"] == 3
    assert isinstance(thread["oldest_waiting_seconds"], float)
    assert thread["oldest_waiting_seconds"] >= 0


def test_liveness_answers_without_a_key_and_without_the_database(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime: Runtime = client.app.state.runtime  # type: ignore[attr-defined]

    def refused() -> NoReturn:
        raise OperationalError("connect", {}, ConnectionRefusedError("refused"))

    monkeypatch.setattr(runtime.engine, "connect", refused)

    live = client.get("/health/live", headers={"Authorization": ""})
    ready = client.get("/health")  # the operator key cannot be checked either: no detail

    assert (live.status_code, live.json()) == (200, {"status": "alive"})
    assert ready.status_code == 503
    assert (ready.json()["database"], ready.json()["reasons"]) == (
        "unreachable",
        ["the database does not answer"],
    )
    assert "detail" not in ready.json()


def test_tools_lists_the_registry_with_defaults(client: TestClient) -> None:
    tools = {tool["tool_id"]: tool for tool in client.get("/tools").json()}

    assert {"noop", "sleep", "fail", "profile-csv"} <= set(tools)
    assert tools["urgent"]["priority"] == 7
    assert tools["profile-csv"]["queue"] == "default"


def test_docs_and_the_openapi_schema_are_served(client: TestClient) -> None:
    docs = client.get("/docs")
    schema = client.get("/openapi.json")

    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/tasks", "/tasks/{task_id}", "/tasks/{task_id}/events", "/rollout", "/health"} <= set(
        paths
    )
