"""The API over the real thread backend, as `switchyard serve` wires it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.runtime import Runtime
from api.settings import Settings
from execution.tools.registry import ToolRegistry
from tests.helpers import operator_client, wait_until
from tests.tools import Gate

CSV = "city,population,founded\n" + "Lyon,522250,-43\nNantes,320732,\nLille,236234,640\n" * 5


@pytest.fixture
def served(settings: Settings, registry: ToolRegistry) -> Iterator[TestClient]:
    """Wired as `switchyard serve` does, with one worker and room for one waiting task."""
    small = settings.model_copy(update={"background_workers": 1, "background_queue_size": 1})
    runtime = Runtime.build(small, registry=registry)
    runtime.prepare_database()  # the embedded database migrates itself on start
    with operator_client(runtime) as client:
        yield client


def _finished(client: TestClient, task_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        task: dict[str, Any] = client.get(f"/tasks/{task_id}").json()
        return task if task["status"] in {"COMPLETED", "FAILED", "CANCELLED"} else None

    return wait_until(ended, what=f"task {task_id} to end")


@pytest.mark.parametrize("source", ["inline", "path"])
def test_a_profile_csv_task_completes_with_its_profile_and_progress_history(
    served: TestClient, data_dir: Path, source: str
) -> None:
    (data_dir / "cities.csv").write_text(CSV, encoding="utf-8")
    payload = {"csv": CSV} if source == "inline" else {"path": "cities.csv"}

    created = served.post(
        "/tasks", json={"tool_id": "profile-csv", "payload": payload | {"chunk_rows": 4}}
    )
    assert created.status_code == 201, created.text
    task = _finished(served, created.json()["task_id"])

    assert task["status"] == "COMPLETED", task
    assert task["result"]["rows"] == 15
    population = task["result"]["profile"][1]
    assert (population["type"], population["min"], population["max"]) == ("integer", 236234, 522250)
    events = served.get(f"/tasks/{task['task_id']}/events").json()
    steps = [e for e in events if e["status"] == "PROCESSING" and e["message"] != "started"]
    assert [e["message"] for e in steps] == [
        "profiled 4 rows",
        "profiled 8 rows",
        "profiled 12 rows",
    ]
    assert all(0 < e["progress"] < 100 for e in steps)
    assert [e["status"] for e in events][-1] == "COMPLETED"


def test_a_full_queue_answers_503_with_retry_after(served: TestClient, gate: Gate) -> None:
    running = served.post("/tasks", json={"tool_id": "gate"}).json()["task_id"]
    wait_until(lambda: running in gate.ran, what="the only worker to start the gate task")
    waiting = served.post("/tasks", json={"tool_id": "noop"})
    assert waiting.status_code == 201

    refused = served.post("/tasks", json={"tool_id": "noop"})

    assert refused.status_code == 503
    assert int(refused.headers["Retry-After"]) > 0
    assert "queue is full" in refused.json()["detail"]
    assert len(served.get("/tasks").json()["items"]) == 2
    gate.open()
    assert _finished(served, waiting.json()["task_id"])["status"] == "COMPLETED"


def test_health_shows_the_thread_pool(served: TestClient) -> None:
    body = served.get("/health").json()

    assert body["status"] == "ok"
    assert body["backends"]["thread"] | {"running": 0, "waiting": 0} == {
        "ok": True,
        "state": "ok",
        "queued": 0,
        "oldest_waiting_seconds": None,
        "workers": 1,
        "alive": 1,
        "running": 0,
        "waiting": 0,
        "capacity": 1,
    }
