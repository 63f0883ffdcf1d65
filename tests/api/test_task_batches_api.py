"""A parallel job over HTTP: its batch counts in GET /tasks/{id}, its batches listed."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_a_job_shows_its_batches_by_status_and_lists_them(client: TestClient) -> None:
    created = client.post("/tasks", json={"tool_id": "squares", "payload": {"n": 3}})
    assert created.status_code == 201, created.text
    task_id = created.json()["task_id"]

    job = client.get(f"/tasks/{task_id}").json()
    batches = client.get(f"/tasks/{task_id}/batches").json()

    assert job["status"] == "COMPLETED"
    assert job["result"] == {"sum": 5, "failed": []}
    assert job["batches"] == {"total": 3, "COMPLETED": 3}
    assert [(b["batch_no"], b["status"], b["result"]) for b in batches] == [
        (0, "COMPLETED", {"square": 0}),
        (1, "COMPLETED", {"square": 1}),
        (2, "COMPLETED", {"square": 4}),
    ]


def test_any_other_task_has_no_batches(client: TestClient) -> None:
    task_id = client.post("/tasks", json={"tool_id": "noop"}).json()["task_id"]

    assert client.get(f"/tasks/{task_id}").json()["batches"] is None
    assert client.get(f"/tasks/{task_id}/batches").json() == []


def test_a_missing_job_has_no_batches_to_show(client: TestClient) -> None:
    assert client.get("/tasks/nope/batches").status_code == 404
