"""One structured log: a task's lines carry its ids on every backend, and the standard library's
records (uvicorn, Celery) come out through the same renderer, as JSON with LOG_JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog
import uvicorn

from backends.celery_app import celery_task_fields
from backends.thread_pool import ThreadPoolBackend
from execution.executor import TaskExecutor
from execution.logs import configure_logging
from execution.store import TaskStore
from execution.tools.registry import Tool, ToolContext, ToolRegistry
from tests.helpers import queued_task, wait_until

tool_log = logging.getLogger("a.tool.of.ours")


class Broken(Exception):
    """What the failing tool raises."""


def chatty(ctx: ToolContext) -> dict[str, Any]:
    """Logs through the standard library and through structlog, then returns."""
    tool_log.info("stdlib line from the tool")
    structlog.get_logger("a.tool.of.ours").info("structlog line from the tool")
    return {"ok": True}


def breaks(ctx: ToolContext) -> dict[str, Any]:
    """Logs, then raises: an expected tool failure."""
    tool_log.info("about to break")
    raise Broken("the disk is full")


@pytest.fixture
def registry() -> ToolRegistry:
    """A tool that logs, and one that raises."""
    return ToolRegistry([Tool(tool_id="chatty", handler=chatty), Tool("breaks", handler=breaks)])


def json_lines(text: str) -> list[dict[str, Any]]:
    """Each line parsed; a line that is not JSON fails the test."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_every_line_of_a_thread_task_carries_its_ids_and_a_failure_warns_once(
    store: TaskStore,
    registry: ToolRegistry,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    configure_logging(level="DEBUG", json_output=True)
    executor = TaskExecutor(store=store, registry=registry, data_dir=data_dir)
    backend = ThreadPoolBackend(executor=executor, workers=1, capacity=10)
    backend.start()
    try:
        ok = queued_task(store, tool_id="chatty")
        bad = queued_task(store, tool_id="breaks")
        backend.enqueue(ok)
        backend.enqueue(bad)
        for task in (ok, bad):
            wait_until(
                lambda task=task: (row := store.get(task.task_id)) and row.status.is_terminal,  # type: ignore[misc]
                what="the task to end",
            )
    finally:
        backend.shutdown(timeout=10)
    logged = capsys.readouterr().err
    lines = json_lines(logged)

    for task, said in ((ok, "stdlib line from the tool"), (bad, "about to break")):
        of_task = [line for line in lines if line.get("task_id") == task.task_id]
        events = [line["event"] for line in of_task]
        assert said in events
        assert "task.claimed" in events
        for line in of_task:
            assert (line["tool_id"], line["backend"], line["attempt"]) == (
                task.tool_id,
                "thread",
                1,
            )
    assert "structlog line from the tool" in [
        line["event"] for line in lines if line.get("task_id") == ok.task_id
    ]
    loud = [line for line in lines if line["level"] in ("warning", "error", "critical")]
    assert [(line["event"], line["task_id"]) for line in loud] == [
        ("task.tool_raised", bad.task_id)
    ]
    assert "Traceback" not in logged
    # The pool's thread forgot the tasks: its own lines carry no task.
    assert all("task_id" not in line for line in lines if line["event"].startswith("backend."))


def test_the_task_context_is_unbound_when_a_run_returns(
    store: TaskStore, registry: ToolRegistry, data_dir: Path
) -> None:
    executor = TaskExecutor(store=store, registry=registry, data_dir=data_dir)
    structlog.contextvars.bind_contextvars(request_id="r1")
    try:
        executor.run(queued_task(store, tool_id="breaks").task_id)
        executor.run("no-such-task")
        assert structlog.contextvars.get_contextvars() == {"request_id": "r1"}
    finally:
        structlog.contextvars.clear_contextvars()


def test_uvicorn_records_are_json_lines_with_the_access_fields(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging(level="INFO", json_output=True)
    uvicorn.Config(app=chatty, log_config=None)  # what `serve` runs with: uvicorn adds no handler
    assert logging.getLogger("uvicorn.access").handlers == []
    assert logging.getLogger("uvicorn.error").handlers == []
    logging.getLogger("uvicorn.error").info("Uvicorn running on %s", "http://127.0.0.1:8000")
    # uvicorn's own access line, as h11_impl logs it.
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:50000", "GET", "/tasks?limit=5", "1.1", 200
    )

    started, access = json_lines(capsys.readouterr().err)

    assert (started["logger"], started["level"]) == ("uvicorn.error", "info")
    assert started["event"] == "Uvicorn running on http://127.0.0.1:8000"
    assert access["logger"] == "uvicorn.access"
    assert "positional_args" not in access
    assert access["event"] == '127.0.0.1:50000 - "GET /tasks?limit=5 HTTP/1.1" 200'
    assert (access["client"], access["method"], access["path"], access["status"]) == (
        "127.0.0.1:50000",
        "GET",
        "/tasks?limit=5",
        200,
    )


def test_celerys_own_task_lines_carry_the_switchyard_task_id(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging(level="INFO", json_output=True, foreign_processors=(celery_task_fields,))
    received = {
        "id": "c-1",
        "name": "switchyard.tool.profile-csv",
        "args": "task_id=t-1",
        "kwargs": "{}",
    }
    older = {"id": "c-2", "name": "switchyard.run_task", "args": "('t-2',)", "kwargs": "{}"}
    other = {"id": "c-3", "name": "someone.else", "args": "task_id=t-3", "kwargs": "{}"}
    celery_log = logging.getLogger("celery.worker.strategy")
    for data in (received, older, other):
        celery_log.info("Task %(name)s[%(id)s] received", data, extra={"data": data})

    new, old, foreign = json_lines(capsys.readouterr().err)

    assert new["event"] == "Task switchyard.tool.profile-csv[c-1] received"
    assert (new["task_id"], new["tool_id"], new["backend"], new["celery_task_id"]) == (
        "t-1",
        "profile-csv",
        "celery",
        "c-1",
    )
    assert (old["task_id"], old["celery_task_id"]) == ("t-2", "c-2")
    assert "task_id" not in foreign
