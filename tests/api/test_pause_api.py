"""POST /queue/pause and /queue/resume: operators only, audited, shown in /rollout and the
metrics, never rate limited; held tasks are accepted, wait QUEUED, survive a restart and run
once after the resume."""

from __future__ import annotations

from typing import Any

import pytest

from api.keys import Role
from api.runtime import Runtime
from api.settings import Settings
from execution.dispatch_gate import held_message
from execution.status import TaskStatus
from execution.tools.registry import ToolRegistry
from tests.api.conftest import ApiUnderTest, BuildApi, Keyholder
from tests.api.test_metrics import scrape, value
from tests.helpers import operator_client, wait_until


def _post(api: ApiUnderTest, who: Keyholder, path: str, body: dict[str, Any]) -> Any:
    return api.client.post(path, json=body, headers=who.headers)


def _submit(api: ApiUnderTest, who: Keyholder, tool_id: str, *, code: int) -> dict[str, Any]:
    response = _post(api, who, "/tasks", {"tool_id": tool_id, "payload": {}})
    assert response.status_code == code, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_paused_tools_tasks_are_accepted_held_and_handed_over_on_resume(
    auth_api: ApiUnderTest, ops: Keyholder, alice: Keyholder
) -> None:
    paused = _post(auth_api, ops, "/queue/pause", {"tool_id": "noop", "reason": "deploy"})
    assert paused.status_code == 200, paused.text
    assert paused.json() == {"paused": ["noop"], "version": 2}

    rollout = auth_api.client.get("/rollout", headers=alice.headers).json()
    assert rollout["paused"] == ["noop"]
    assert "PAUSED for noop" in rollout["explanation"]

    held = _submit(auth_api, alice, "noop", code=202)  # accepted, not handed over yet
    other = _submit(auth_api, alice, "sleep", code=201)
    assert (held["status"], held["message"]) == ("QUEUED", held_message("noop"))
    handed = auth_api.backend.submitted  # type: ignore[attr-defined]
    assert [t.task_id for t in handed] == [other["task_id"]]

    resumed = _post(auth_api, ops, "/queue/resume", {"tool_id": "noop", "reason": "deployed"})
    assert resumed.status_code == 200, resumed.text
    assert resumed.json() == {"paused": [], "version": 3, "released": 1}
    assert [t.task_id for t in handed] == [other["task_id"], held["task_id"]]

    history = auth_api.client.get("/rollout/history?limit=2", headers=ops.headers).json()
    assert [(e["action"], e["actor"], e["reason"]) for e in history] == [
        ("resume", "ops-oncall", "deployed"),
        ("pause", "ops-oncall", "deploy"),
    ]
    assert (history[1]["before"]["paused"], history[1]["after"]["paused"]) == ([], ["noop"])


def test_only_operators_pause_or_resume(auth_api: ApiUnderTest, alice: Keyholder) -> None:
    for path in ("/queue/pause", "/queue/resume"):
        assert _post(auth_api, alice, path, {"reason": "mine"}).status_code == 403


def test_an_unknown_tool_or_no_reason_is_422_naming_the_field(
    auth_api: ApiUnderTest, ops: Keyholder
) -> None:
    unknown = _post(auth_api, ops, "/queue/pause", {"tool_id": "nope", "reason": "typo"})
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["loc"] == ["body", "tool_id"]
    assert "unknown tool 'nope'" in unknown.json()["detail"]
    assert _post(auth_api, ops, "/queue/resume", {"tool_id": "noop"}).status_code == 422
    assert auth_api.client.get("/rollout", headers=ops.headers).json()["version"] == 1


def test_one_tool_cannot_resume_while_every_tool_is_paused(
    auth_api: ApiUnderTest, ops: Keyholder
) -> None:
    assert _post(auth_api, ops, "/queue/pause", {"reason": "incident"}).json()["paused"] == ["*"]

    refused = _post(auth_api, ops, "/queue/resume", {"tool_id": "noop", "reason": "one"})

    assert refused.status_code == 409
    assert "resume all (no tool_id)" in refused.json()["detail"]
    resumed = _post(auth_api, ops, "/queue/resume", {"reason": "over"})
    assert resumed.json()["paused"] == []


def test_pause_and_resume_are_never_rate_limited(build_api: BuildApi) -> None:
    api = build_api(rollout_change_limit=1)
    ops = api.issue("ops", Role.OPERATOR)
    version = api.client.get("/rollout", headers=ops.headers).json()["version"]
    change = {"percentage": 0, "tool_overrides": {"noop": 0}, "reason": "one change"}
    headers = {**ops.headers, "If-Match": f'"{version}"'}
    assert api.client.put("/rollout", json=change, headers=headers).status_code == 200

    for path in ("/queue/pause", "/queue/resume", "/queue/pause", "/queue/resume"):
        assert _post(api, ops, path, {"reason": "incident"}).status_code == 200


@pytest.fixture
def served(settings: Settings, registry: ToolRegistry) -> tuple[Settings, ToolRegistry]:
    """What `switchyard serve` wires: the real thread pool, its sweep and the executor's gate."""
    return settings.model_copy(update={"thread_sweep_seconds": 0.05}), registry


def _serve(settings: Settings, registry: ToolRegistry) -> Runtime:
    runtime = Runtime.build(settings, registry=registry)
    runtime.prepare_database()
    return runtime


def test_a_pause_holds_across_a_restart_and_every_task_runs_once_after_the_resume(
    served: tuple[Settings, ToolRegistry],
) -> None:
    settings, registry = served
    with operator_client(_serve(settings, registry)) as client:
        assert client.post("/queue/pause", json={"reason": "incident"}).status_code == 200
        ids = [
            client.post("/tasks", json={"tool_id": "echo", "payload": {"n": n}}).json()["task_id"]
            for n in range(4)
        ]
        samples = scrape(client)
        assert value(samples, "switchyard_dispatch_paused", tool="*") == 1

    # The restarted pool sweeps once, as it starts, and not again during the test: a periodic
    # sweep racing the resume could hand the held tasks over first (they would still run once,
    # but the resume would report fewer released than it must).
    restarted = _serve(settings.model_copy(update={"thread_sweep_seconds": 3600}), registry)
    with operator_client(restarted) as client:
        assert client.get("/rollout").json()["paused"] == ["*"]
        # Its pool's start-up sweep has passed: nothing started.
        wait_until(
            lambda: restarted.backends["thread"].health().counts["waiting"] == 0,
            what="the pool to be idle",
        )
        assert {client.get(f"/tasks/{i}").json()["status"] for i in ids} == {"QUEUED"}

        assert client.post("/queue/resume", json={"reason": "over"}).json()["released"] == 4

        def ended() -> list[Any] | None:
            tasks = [restarted.store.get(i) for i in ids]
            done = all(t is not None and t.status is TaskStatus.COMPLETED for t in tasks)
            return tasks if done else None

        tasks = wait_until(ended, what="the released tasks to run")
        assert [t.attempts for t in tasks] == [1, 1, 1, 1]
        assert value(scrape(client), "switchyard_dispatch_paused", tool="*") == 0
