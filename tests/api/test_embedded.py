"""`tool.enqueue(...)` from application code: a plain script's Switchyard, and a FastAPI app that
embeds or mounts one; the rows are those POST /tasks makes."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.embedded import NOT_STARTED, Switchyard
from api.keys import Role
from api.settings import Settings
from execution.records import TaskRecord
from execution.status import TaskStatus
from execution.store import TaskFilter
from execution.tools.builtin import noop, sleep
from execution.tools.enqueue import NoSwitchyard
from execution.tools.registry import InvalidPayload, ToolContext, UnknownTool, tool
from tests.api.conftest import api_settings
from tests.helpers import wait_until
from tests.tools import echo

pytestmark = pytest.mark.usefixtures("restore_logging")

PER_TASK = {
    "task_id",
    "user_id",
    "celery_task_id",
    "rollout_bucket",
    "created_at",
    "queued_at",
    "processing_started_at",
    "completed_at",
    "updated_at",
    "dispatched_at",
}
"""What differs between two runs of the same task, whoever created them."""


@tool("not-loaded")
def not_loaded(ctx: ToolContext) -> dict[str, Any]:
    """A tool no SWITCHYARD_TOOLS module of these tests names."""
    return {}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Its own database; the built-in tools and the tests' own."""
    return api_settings(
        tmp_path,
        switchyard_tools="execution.tools.builtin,tests.tools",
        background_workers=2,
        shutdown_timeout=10,
    )


@pytest.fixture
def switchyard(settings: Settings) -> Iterator[Switchyard]:
    """A started Switchyard, stopped at the end."""
    with Switchyard.start(settings) as started:
        yield started


def _rows(switchyard: Switchyard) -> list[TaskRecord]:
    return switchyard.runtime.store.find(TaskFilter(), limit=100, offset=0)


def _ended(switchyard: Switchyard, task_id: str) -> TaskRecord | None:
    record = switchyard.runtime.store.get(task_id)
    return record if record is not None and record.status.is_terminal else None


def _same_task(record: TaskRecord) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(record).items() if k not in PER_TASK}


def test_an_enqueued_task_runs_and_its_handle_waits_for_the_result(
    switchyard: Switchyard,
) -> None:
    handle = echo.enqueue({"n": 1}, user_id="reports", priority=4)

    done = handle.wait(timeout=10)

    assert (done.status, done.result) == (
        TaskStatus.COMPLETED,
        {"task_id": handle.task_id, "attempt": 1, "payload": {"n": 1}},
    )
    assert (done.user_id, done.priority, done.backend) == ("reports", 4, "thread")
    assert handle.status() == done
    events = switchyard.runtime.store.events(handle.task_id)
    assert [e.status for e in events] == ["CREATED", "QUEUED", "PROCESSING", "COMPLETED"]


def test_a_tool_is_still_a_function_its_callers_can_call(tmp_path: Path) -> None:
    context = ToolContext(
        task_id="t", attempt=1, payload={}, progress=lambda *_: None, data_dir=tmp_path
    )

    assert noop(context) == {"ok": True}
    assert noop.__name__ == "noop"
    assert noop.spec.tool_id == "noop"


def test_wait_gives_up_with_a_timeout_naming_the_task_and_cancel_stops_it(
    switchyard: Switchyard,
) -> None:
    handle = sleep.enqueue({"seconds": 5, "steps": 500})

    with pytest.raises(TimeoutError, match=f"task {handle.task_id} \\(sleep\\) did not end"):
        handle.wait(timeout=0.05)
    assert handle.cancel() is not None

    assert handle.wait(timeout=10).status is TaskStatus.CANCELLED


def test_a_tool_the_running_switchyard_does_not_load_is_an_unknown_tool(
    switchyard: Switchyard,
) -> None:
    with pytest.raises(UnknownTool, match="unknown tool 'not-loaded'; known tools: chatty"):
        not_loaded.enqueue()
    assert _rows(switchyard) == []


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"seconds": "soon"}, "payload for 'sleep' is invalid: seconds"),
        ({"seconds": 1, "at": datetime.now(UTC)}, "not storable as JSON"),
        ({"seconds": float("nan")}, "not storable as JSON"),
    ],
)
def test_a_payload_that_does_not_fit_is_refused_before_any_row(
    switchyard: Switchyard, payload: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidPayload, match=reason):
        sleep.enqueue(payload)
    assert _rows(switchyard) == []


def test_without_a_running_switchyard_enqueue_says_how_to_start_one(settings: Settings) -> None:
    with pytest.raises(NoSwitchyard, match="no Switchyard is running in this process: start"):
        noop.enqueue()

    with Switchyard.start(settings):
        noop.enqueue().wait(timeout=10)
    with pytest.raises(NoSwitchyard):
        noop.enqueue()  # stopped: unbound again


def test_a_second_switchyard_in_one_process_is_refused(
    switchyard: Switchyard, tmp_path: Path
) -> None:
    (tmp_path / "other").mkdir()
    other = Switchyard(api_settings(tmp_path / "other"))

    with pytest.raises(RuntimeError, match="already running in this process"):
        other.startup()
    assert noop.enqueue().wait(timeout=10).status is TaskStatus.COMPLETED  # the first one


def _host(switchyard: Switchyard, *, lifespan: Any) -> FastAPI:
    """An application with its own route that enqueues, and Switchyard's API mounted."""
    app = FastAPI(lifespan=lifespan)

    @app.post("/reports")
    def make_report() -> dict[str, str]:
        return {"task_id": echo.enqueue({"n": 1}).task_id}

    app.mount("/switchyard", switchyard.app)
    return app


def test_a_fastapi_app_enqueues_through_the_switchyard_its_lifespan_starts(
    settings: Settings,
) -> None:
    switchyard = Switchyard(settings)

    with TestClient(_host(switchyard, lifespan=switchyard.lifespan)) as client:
        task_id = client.post("/reports").json()["task_id"]
        operator = switchyard.runtime.keys.create(user_id="ops", role=Role.OPERATOR)
        client.headers["Authorization"] = f"Bearer {operator.token}"
        over_http = client.post("/switchyard/tasks", json={"tool_id": "echo", "payload": {"n": 1}})
        assert over_http.status_code == 201
        assert client.get(f"/switchyard/tasks/{task_id}").status_code == 200
        posted_id = over_http.json()["task_id"]
        enqueued = wait_until(lambda: _ended(switchyard, task_id), what="the enqueued task")
        posted = wait_until(lambda: _ended(switchyard, posted_id), what="the posted task")

    assert _same_task(enqueued) == _same_task(posted) | {"result": enqueued.result}
    assert not switchyard.running  # the lifespan stopped it


def test_a_host_lifespan_of_its_own_can_enter_switchyards(settings: Settings) -> None:
    switchyard = Switchyard(settings)
    seen: list[bool] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with switchyard.lifespan(app):
            seen.append(switchyard.running)
            yield

    with TestClient(_host(switchyard, lifespan=lifespan)) as client:
        assert client.post("/reports").status_code == 200

    assert seen == [True]
    assert not switchyard.running


def test_a_mounted_api_without_the_hosts_lifespan_says_what_is_missing(
    settings: Settings,
) -> None:
    switchyard = Switchyard(settings)

    with TestClient(_host(switchyard, lifespan=None)) as client:
        response = client.get("/switchyard/health")

    assert response.status_code == 503
    assert response.json() == {"detail": NOT_STARTED}
