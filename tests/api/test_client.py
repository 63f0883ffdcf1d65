"""SwitchyardClient against a real uvicorn server: typed answers, one error type, a wait that
follows the task's stream (or polls a server without one) and gives up at its timeout."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.routing import APIRoute
from structlog.testing import capture_logs

from api.app import create_app
from api.client import SwitchyardClient, SwitchyardError, error_of
from api.keys import Role
from api.runtime import Runtime
from execution.records import TaskRecord
from execution.status import TaskStatus
from tests.api.conftest import api_settings
from tests.helpers import wait_until
from tests.integration.servers import free_port

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("restore_logging")]

Serve = Callable[..., SwitchyardClient]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Serve the API over a real thread pool with uvicorn on a free port; a client of it with
    an operator key. `without_stream` drops GET /tasks/{id}/stream, as an older server."""
    servers: list[tuple[uvicorn.Server, threading.Thread, SwitchyardClient]] = []

    def start(*, without_stream: bool = False) -> SwitchyardClient:
        directory = tmp_path / str(len(servers))
        directory.mkdir()
        settings = api_settings(
            directory,
            switchyard_tools="execution.tools.builtin,tests.tools",
            background_workers=2,
            shutdown_timeout=5,
        )
        runtime = Runtime.build(settings)
        runtime.prepare_database()
        token = runtime.keys.create(user_id="svc", role=Role.OPERATOR).token
        app = create_app(runtime)
        if without_stream:
            _drop_stream(app)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
        )
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        wait_until(lambda: server.started, what="uvicorn to start")
        client = SwitchyardClient(f"http://127.0.0.1:{port}", token)
        servers.append((server, thread, client))
        return client

    yield start
    for server, thread, client in servers:
        client.close()
        server.should_exit = True
        thread.join(timeout=30)


def _drop_stream(app: FastAPI) -> None:
    app.router.routes[:] = [
        route
        for route in app.router.routes
        if not (isinstance(route, APIRoute) and route.path.endswith("/stream"))
    ]


def test_a_submitted_task_is_followed_through_its_stream_to_its_result(serve: Serve) -> None:
    client = serve()

    task = client.submit("echo", {"n": 1}, priority=3)
    with capture_logs() as logs:
        done = client.wait(task.task_id, timeout=30)

    assert isinstance(task, TaskRecord)
    assert (task.status, task.priority, task.user_id) == (TaskStatus.QUEUED, 3, "svc")
    assert done.status is TaskStatus.COMPLETED
    assert done.result == {"task_id": task.task_id, "attempt": 1, "payload": {"n": 1}}
    assert client.get(task.task_id) == done
    streams = [e for e in logs if e["event"] == "task.stream.ended"]
    assert [(e["task_id"], e["ended"]) for e in streams] == [(task.task_id, "COMPLETED")]


def test_wait_polls_a_server_without_the_stream(serve: Serve) -> None:
    client = serve(without_stream=True)

    task = client.submit("sleep", {"seconds": 0.2, "steps": 2})

    assert client.wait(task.task_id, timeout=30).status is TaskStatus.COMPLETED


def test_wait_gives_up_at_its_timeout_naming_the_task_and_cancel_stops_it(serve: Serve) -> None:
    client = serve()
    task = client.submit("sleep", {"seconds": 30, "steps": 1000})

    with pytest.raises(TimeoutError, match=f"task {task.task_id} did not end within 0.3 s"):
        client.wait(task.task_id, timeout=0.3)
    client.cancel(task.task_id)

    assert client.wait(task.task_id, timeout=30).status is TaskStatus.CANCELLED


def test_a_failed_task_is_listed_retried_and_fails_again(serve: Serve) -> None:
    client = serve()
    task = client.submit("fail", {"message": "nope"})
    assert client.wait(task.task_id, timeout=30).error_message == "nope"

    listed = client.list(status=TaskStatus.FAILED, tool_id="fail")
    again = client.retry(task.task_id)

    assert [t.task_id for t in listed.items] == [task.task_id]
    assert again.status is TaskStatus.QUEUED
    assert client.wait(task.task_id, timeout=30).attempts == 2


def test_a_batch_comes_back_in_item_order_and_a_bad_one_is_a_422_naming_the_item(
    serve: Serve,
) -> None:
    client = serve()

    batch = client.submit_batch(
        [{"tool_id": "noop", "payload": {}}, {"tool_id": "echo", "payload": {"n": 2}}]
    )
    with pytest.raises(SwitchyardError) as caught:
        client.submit_batch([{"tool_id": "noop"}, {"tool_id": "missing"}])

    assert [t.tool_id for t in batch.items] == ["noop", "echo"]
    assert batch.rejected == 0
    assert caught.value.status_code == 422
    assert caught.value.detail.startswith("invalid batch, nothing created: item 1: unknown tool")
    assert caught.value.body["errors"][0]["loc"] == ["body", "items", 1, "tool_id"]
    assert len(client.list().items) == 2  # the refused batch created nothing


def test_refusals_are_one_error_type_with_the_status_and_the_apis_reason(serve: Serve) -> None:
    client = serve()

    with pytest.raises(SwitchyardError) as missing:
        client.get("no-such-task")
    with pytest.raises(SwitchyardError) as unknown:
        client.submit("profile_csv")
    with pytest.raises(SwitchyardError) as ended:
        client.cancel(client.wait(client.submit("noop").task_id, timeout=30).task_id)

    assert (missing.value.status_code, missing.value.detail) == (404, "no task no-such-task")
    assert unknown.value.status_code == 422
    assert str(unknown.value).startswith("422: unknown tool 'profile_csv'; known tools:")
    assert ended.value.status_code == 409


def test_a_wrong_key_and_an_unreachable_api_are_switchyard_errors(serve: Serve) -> None:
    base = serve().base_url  # a server that runs, and a port where none does

    with (
        SwitchyardClient(base, "sy_0000000000000000_" + "x" * 43) as wrong,
        pytest.raises(SwitchyardError, match=r"^401: ") as refused,
    ):
        wrong.list()
    with (
        SwitchyardClient(f"http://127.0.0.1:{free_port()}", "k") as nowhere,
        pytest.raises(SwitchyardError, match="cannot reach the API at") as unreachable,
    ):
        nowhere.get("t")

    assert refused.value.status_code == 401
    assert unreachable.value.status_code is None


def test_a_503_carries_its_retry_after() -> None:
    response = httpx.Response(
        503, headers={"Retry-After": "3"}, json={"detail": "thread backend queue is full"}
    )

    error = error_of(response)

    assert error is not None
    assert (error.status_code, error.retry_after) == (503, 3)
    assert str(error) == "503: thread backend queue is full (retry after 3 s)"
    assert error_of(httpx.Response(200, json={})) is None
