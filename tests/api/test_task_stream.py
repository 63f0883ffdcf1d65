"""GET /tasks/{id}/stream: a task's states as Server-Sent Events, over the real thread pool.

Every test that reads a stream carries a timeout: a stream that fails to end hangs, and the
timeout turns that into a failure.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx_sse import ServerSentEvent, connect_sse
from structlog.testing import capture_logs

from api.keys import Role
from api.routes import task_stream
from execution.tools.registry import Tool, ToolContext, ToolRegistry
from tests.api.conftest import ApiUnderTest, Keyholder
from tests.api.reliability_tools import TOOL_TIMEOUT, Tools, reliable_api

pytestmark = pytest.mark.timeout(30)


class Stepper(Tools):
    """Adds `steps`: reports 25 %, then 75 %, each time waiting until the test has seen it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Semaphore(0)

    def steps(self, ctx: ToolContext, /) -> dict[str, Any]:
        """Two progress steps, each held until the test releases `seen`."""
        for percent in (25, 75):
            ctx.progress(percent, f"step at {percent}")
            if not self.seen.acquire(timeout=TOOL_TIMEOUT):
                raise TimeoutError("the test never saw the step")
        return {"steps": 2}

    def registry(self) -> ToolRegistry:
        """Tools' registry and `steps`."""
        return ToolRegistry(
            [*super().registry().values(), Tool(tool_id="steps", handler=self.steps)]
        )


@pytest.fixture
def tools() -> Stepper:
    """The controllable tools."""
    return Stepper()


@pytest.fixture
def api(tmp_path: Path, tools: Stepper) -> Iterator[ApiUnderTest]:
    """The app over a real, started thread pool."""
    with reliable_api(tmp_path, tools) as served:
        yield served


@pytest.fixture
def alice(api: ApiUnderTest) -> Keyholder:
    """A user."""
    return api.issue("alice")


def create(api: ApiUnderTest, who: Keyholder, tool_id: str, payload: Any = None) -> str:
    """A new task of `who`; its id."""
    body = {"tool_id": tool_id, "payload": payload or {}}
    response = api.client.post("/tasks", json=body, headers=who.headers)
    assert response.status_code == 201, response.text
    task_id: str = response.json()["task_id"]
    return task_id


def stream(client: TestClient, task_id: str, who: Keyholder) -> Iterator[ServerSentEvent]:
    """The events of the task's stream, until the server ends it."""
    with connect_sse(client, "GET", f"/tasks/{task_id}/stream", headers=who.headers) as source:
        assert source.response.status_code == 200
        yield from source.iter_sse()


def test_a_stream_sends_the_state_then_each_step_and_ends_after_completed(
    api: ApiUnderTest, alice: Keyholder, tools: Stepper
) -> None:
    task_id = create(api, alice, "steps")
    events: list[ServerSentEvent] = []
    for event in stream(api.client, task_id, alice):
        events.append(event)
        if event.json()["progress"] in (25, 75):
            tools.seen.release()

    states = [e.json() for e in events]
    assert {e.event for e in events} == {"task"}
    assert [e.id for e in events] == [str(n) for n in range(1, len(events) + 1)]
    assert states[0]["status"] in {"QUEUED", "PROCESSING"}
    progress = [(s["status"], s["progress"], s["message"]) for s in states]
    assert ("PROCESSING", 25, "step at 25") in progress
    assert ("PROCESSING", 75, "step at 75") in progress
    assert progress[-1] == ("COMPLETED", 100, "completed")
    assert len(set(progress)) == len(progress), "an event only when something changed"
    final = api.client.get(f"/tasks/{task_id}", headers=alice.headers).json()
    assert states[-1] == {key: final[key] for key in states[-1]}


def test_a_failed_task_ends_its_stream_with_failed_and_its_error_code(
    api: ApiUnderTest, alice: Keyholder
) -> None:
    task_id = create(api, alice, "fail", {"message": "as planned", "after_percent": 40})

    states = [e.json() for e in stream(api.client, task_id, alice)]

    assert states[-1]["status"] == "FAILED"
    assert states[-1]["error_code"] is not None
    assert "as planned" in states[-1]["error_message"]
    assert all(s["status"] in {"QUEUED", "PROCESSING"} for s in states[:-1])
    final = api.client.get(f"/tasks/{task_id}", headers=alice.headers).json()
    assert states[-1]["error_code"] == final["error_code"]


def test_the_stream_of_an_ended_task_is_one_event_in_sse_framing(
    api: ApiUnderTest, alice: Keyholder
) -> None:
    task_id = create(api, alice, "noop")
    list(stream(api.client, task_id, alice))  # until it has ended

    with api.client.stream("GET", f"/tasks/{task_id}/stream", headers=alice.headers) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())

    assert lines[0] == "event: task"
    assert lines[1].startswith("data: ")
    assert json.loads(lines[1].removeprefix("data: "))["status"] == "COMPLETED"
    assert lines[2:] == ["id: 1", ""]


def test_another_users_task_and_an_unknown_one_are_404_before_any_event(
    api: ApiUnderTest, alice: Keyholder
) -> None:
    task_id = create(api, alice, "noop")
    bob = api.issue("bob")

    for who, path in ((bob, f"/tasks/{task_id}/stream"), (alice, "/tasks/no-such-task/stream")):
        response = api.client.get(path, headers=who.headers)
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json()["detail"].startswith("no task ")


def test_an_operator_streams_another_users_task(api: ApiUnderTest, alice: Keyholder) -> None:
    task_id = create(api, alice, "noop")
    ops = api.issue("ops-oncall", Role.OPERATOR)

    states = [e.json() for e in stream(api.client, task_id, ops)]

    assert states[-1]["task_id"] == task_id
    assert states[-1]["status"] == "COMPLETED"


@pytest.mark.parametrize(
    ("headers", "path", "expected"),
    [
        ({}, "/tasks/{task_id}/stream", 401),
        ({"Authorization": "Bearer sy_nope_nope"}, "/tasks/{task_id}/stream", 401),
        (None, "/tasks/bad%20id/stream", 422),
        (None, "/tasks/{task_id}/stream?since=3", 422),
    ],
)
def test_a_request_without_a_valid_key_or_with_bad_input_gets_a_json_error(
    api: ApiUnderTest,
    alice: Keyholder,
    headers: dict[str, str] | None,
    path: str,
    expected: int,
) -> None:
    task_id = create(api, alice, "noop")

    response = api.client.get(
        path.format(task_id=task_id), headers=alice.headers if headers is None else headers
    )

    assert response.status_code == expected, response.text
    assert response.headers["content-type"] == "application/json"


def test_a_client_that_goes_away_ends_the_streams_polling(
    api: ApiUnderTest, alice: Keyholder, tools: Stepper
) -> None:
    task_id = create(api, alice, "blocks")  # runs until the test ends
    with capture_logs() as logs:
        with connect_sse(
            api.client, "GET", f"/tasks/{task_id}/stream", headers=alice.headers
        ) as source:
            first = next(source.iter_sse())
        # Leaving the block closed the connection; the test client waits for the app's end.
        assert first.json()["status"] in {"QUEUED", "PROCESSING"}
        ended = [e for e in logs if e["event"] == "task.stream.ended"]

    assert [(e["task_id"], e["ended"]) for e in ended] == [(task_id, "disconnected")]


def test_a_stream_open_past_its_bound_ends_with_a_timeout_event(
    api: ApiUnderTest, alice: Keyholder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(task_stream, "MAX_STREAM_SECONDS", 0.0)
    task_id = create(api, alice, "blocks")

    events = list(stream(api.client, task_id, alice))

    assert [e.event for e in events] == ["task", "timeout"]
    assert [e.id for e in events] == ["1", "2"]
    assert "reconnect" in events[-1].json()["detail"]


def test_the_openapi_schema_declares_an_event_stream_and_json_errors(api: ApiUnderTest) -> None:
    operation = api.client.get("/openapi.json").json()["paths"]["/tasks/{task_id}/stream"]["get"]

    assert operation["security"] == [{"ApiKey": []}]
    assert list(operation["responses"]["200"]["content"]) == ["text/event-stream"]
    for code in ("401", "404", "422"):
        assert list(operation["responses"][code]["content"]) == ["application/json"], code
