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


def test_retrying_a_failed_job_runs_again_only_what_did_not_complete(client: TestClient) -> None:
    payload = {"n": 3, "flaky": {"0": 3}}  # batch 0 fails its first 3 attempts: all it has
    task_id = client.post("/tasks", json={"tool_id": "squares", "payload": payload}).json()[
        "task_id"
    ]
    failed = client.get(f"/tasks/{task_id}").json()
    assert (failed["status"], failed["error_code"]) == ("FAILED", "BATCH_FAILED")
    assert failed["batches"] == {"total": 3, "CANCELLED": 2, "FAILED": 1}

    retried = client.post(f"/tasks/{task_id}/retry")

    assert retried.status_code == 200, retried.text
    job = client.get(f"/tasks/{task_id}").json()
    assert (job["status"], job["result"]) == ("COMPLETED", {"sum": 5, "failed": []})
    batches = client.get(f"/tasks/{task_id}/batches").json()
    assert [(b["attempts"], b["attempts_before_retry"]) for b in batches] == [
        (4, 3),  # one more attempt, its retry policy counting afresh
        (1, 0),
        (1, 0),
    ]
