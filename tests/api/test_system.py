"""/rollout, /health, /tools and the OpenAPI docs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi.testclient import TestClient

from api.runtime import Runtime
from api.settings import Settings
from backends.base import BackendHealth, TaskBackend
from backends.testing import InlineBackend, RecordingBackend
from execution.executor import TaskExecutor
from execution.tools.registry import ToolRegistry
from tests.helpers import operator_client


class UnhealthyBackend(RecordingBackend):
    """A backend that says it cannot take work."""

    def health(self) -> BackendHealth:
        return BackendHealth(ok=False, detail={"broker": "unreachable"})


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
        "database": "ok",
        "backends": {"thread": {"ok": True}},
    }


def test_health_is_503_degraded_when_a_backend_is_not(
    settings: Settings, registry: ToolRegistry, executor: TaskExecutor
) -> None:
    backends: dict[str, TaskBackend] = {
        "thread": InlineBackend(executor),
        "celery": UnhealthyBackend(name="celery"),
    }

    with _serving(settings, registry, backends) as client:
        response = client.get("/health")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["backends"]["celery"] == {"ok": False, "broker": "unreachable"}


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
