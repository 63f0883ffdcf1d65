"""Celery's own tools show Switchyard's truth, and the worker's log is structured.

A real redis-server and a real `switchyard worker` (LOG_JSON=true); tasks are published by an
in-process Celery-routing runtime, as the API does. What Flower shows comes from the task events,
captured here with Celery's own `events.Receiver`; `celery inspect` is run as a command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from celery import Celery

from api.runtime import Runtime
from api.settings import Settings
from backends.celery_app import redis_priority, tool_task_name
from dispatch.dispatcher import NewTask
from execution import database
from execution.records import TaskRecord
from execution.status import TaskStatus
from tests.helpers import wait_until
from tests.integration.servers import RedisServer
from tests.integration.workers import REPO_ROOT, WorkerProcess, start_worker

pytestmark = pytest.mark.integration

WAIT_SECONDS = 60.0
TOOLS = "execution.tools.builtin,tests.integration.chatty_tools"
HOSTNAME = "visibility@localhost"


@dataclass
class Events:
    """Every event the workers send, captured by Celery's own receiver in a thread."""

    app: Celery
    seen: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _receiver: Any = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen; return once a worker heartbeat arrived, so no task event can be missed."""

        def listen() -> None:
            with self.app.connection() as conn:
                self._receiver = self.app.events.Receiver(conn, handlers={"*": self._keep})
                self._receiver.capture(limit=None, timeout=None, wakeup=True)

        self._thread = threading.Thread(target=listen, name="events", daemon=True)
        self._thread.start()
        wait_until(
            lambda: self.of_type("worker-heartbeat") or None,
            what="a worker heartbeat event",
            timeout=WAIT_SECONDS,
        )

    def _keep(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.seen.append(event)

    def of_type(self, kind: str, uuid: str | None = None) -> list[dict[str, Any]]:
        """The events of one type so far, of one Celery task if `uuid`."""
        with self._lock:
            return [
                e
                for e in self.seen
                if e["type"] == kind and (uuid is None or e.get("uuid") == uuid)
            ]

    def stop(self) -> None:
        """Stop the receiver's loop."""
        if self._receiver is not None:
            self._receiver.should_stop = True
        if self._thread is not None:
            self._thread.join(timeout=10)


@dataclass
class Rig:
    """The publishing runtime, the worker, the worker's environment and the events."""

    runtime: Runtime
    worker: WorkerProcess
    env: dict[str, str]
    broker: str
    events: Events

    def run(self, tool_id: str, payload: dict[str, Any], priority: int = 0) -> TaskRecord:
        """Submit on Celery and wait until the row and Celery both say the task ended."""
        record = self.runtime.dispatcher.submit(
            NewTask(tool_id=tool_id, payload=payload, user_id="visibility", priority=priority)
        )
        assert record.backend == "celery"

        def ended() -> TaskRecord | None:
            row = self.runtime.store.get(record.task_id)
            celery_id = row.celery_task_id if row else None
            done = self.events.of_type("task-succeeded", celery_id) or self.events.of_type(
                "task-failed", celery_id
            )
            return row if row is not None and row.status.is_terminal and done else None

        return wait_until(ended, what=f"task {record.task_id} to end", timeout=WAIT_SECONDS)

    def celery(self, *args: str) -> str:
        """`celery -A api.worker <args>` with the worker's environment; its stdout."""
        done = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "api.worker", *args],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **self.env},
            capture_output=True,
            text=True,
            timeout=WAIT_SECONDS,
            check=True,
        )
        return done.stdout

    def log_lines(self) -> list[dict[str, Any]]:
        """The worker's log, each line parsed as JSON (any other line fails the test)."""
        lines = [line for line in self.worker.log().splitlines() if line.strip()]
        parsed = []
        for line in lines:
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"a worker log line is not JSON: {line!r}")
        return parsed


@pytest.fixture(scope="module")
def rig(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """A Celery-routing runtime and one worker process, on a fresh SQLite database."""
    workdir = tmp_path_factory.mktemp("visibility")
    data_dir = workdir / "data"
    data_dir.mkdir()
    url = f"sqlite:///{workdir / 'switchyard.db'}"
    broker = redis_server.url.rsplit("/", 1)[0] + "/5"
    runtime = Runtime.build(
        Settings(
            _env_file=None,
            database_url=url,
            redis_url=broker,
            use_celery=True,
            celery_rollout_percentage=100,
            switchyard_data_dir=data_dir,
            switchyard_tools=TOOLS,
            background_workers=1,
        )
    )
    database.upgrade(runtime.engine)
    env = {
        "DATABASE_URL": url,
        "REDIS_URL": broker,
        "SWITCHYARD_DATA_DIR": str(data_dir),
        "SWITCHYARD_TOOLS": TOOLS,
        "LOG_JSON": "true",
        "LOG_LEVEL": "INFO",
    }
    worker = start_worker(
        env=env, broker_url=broker, hostname=HOSTNAME, log_path=workdir / "worker.log"
    )
    events = Events(Celery(broker=broker, set_as_current=False))
    runtime.start()
    try:
        events.start()
        yield Rig(runtime, worker, env, broker, events)
    finally:
        events.stop()
        events.app.close()
        runtime.stop()
        worker.stop()


def test_the_worker_registers_a_task_per_tool_and_the_older_name(rig: Rig) -> None:
    registered = rig.celery("inspect", "registered", "--json", f"--destination={HOSTNAME}")
    names = set(json.loads(registered)[HOSTNAME])
    assert names >= {tool_task_name(t) for t in rig.runtime.registry}
    assert "switchyard.tool.profile-csv" in names
    assert "switchyard.run_task" in names


def test_a_succeeding_tool_is_a_succeeded_task_under_its_tool_name(rig: Rig) -> None:
    record = rig.run("noop", {})

    assert record.status == TaskStatus.COMPLETED
    (received,) = rig.events.of_type("task-received", record.celery_task_id)
    assert received["name"] == "switchyard.tool.noop"
    assert received["args"] == f"task_id={record.task_id}"
    (succeeded,) = rig.events.of_type("task-succeeded", record.celery_task_id)
    assert succeeded["result"] == "'completed'"


def test_a_failing_tool_is_a_failed_task_with_its_error_code(rig: Rig) -> None:
    record = rig.run("fail", {"message": "boom"})

    assert (record.status, record.error_code) == (TaskStatus.FAILED, "ToolFailure")
    (received,) = rig.events.of_type("task-received", record.celery_task_id)
    assert (received["name"], received["args"]) == (
        "switchyard.tool.fail",
        f"task_id={record.task_id}",
    )
    (failed,) = rig.events.of_type("task-failed", record.celery_task_id)
    assert failed["exception"] == "TaskFailed('ToolFailure: boom')"
    assert not rig.events.of_type("task-succeeded", record.celery_task_id)
    # Acknowledged, not redelivered: nothing is left unacked or queued in Redis.
    client = redis.Redis.from_url(rig.broker)
    wait_until(
        lambda: client.hlen("unacked") == 0, what="the message acknowledged", timeout=WAIT_SECONDS
    )
    assert len(rig.events.of_type("task-received", record.celery_task_id)) == 1


def test_inspect_active_shows_the_task_id_and_the_redis_priority(rig: Rig) -> None:
    task = rig.runtime.dispatcher.submit(
        NewTask(tool_id="sleep", payload={"seconds": 30, "steps": 300}, user_id="v", priority=2)
    )
    wait_until(
        lambda: (row := rig.runtime.store.get(task.task_id)) and row.status == "PROCESSING",
        what="the sleep task to run",
        timeout=WAIT_SECONDS,
    )
    active = json.loads(rig.celery("inspect", "active", "--json", f"--destination={HOSTNAME}"))
    (shown,) = active[HOSTNAME]
    assert shown["name"] == "switchyard.tool.sleep"
    assert shown["args"] == [task.task_id]  # the real args; the events show argsrepr
    assert shown["id"] == task.celery_task_id
    assert shown["delivery_info"]["priority"] == redis_priority(2) == 7
    # A cancelled task is not a failed one: Celery shows it succeeded, with "cancelled".
    rig.runtime.dispatcher.cancel(task.task_id, actor="visibility")
    wait_until(
        lambda: rig.events.of_type("task-succeeded", task.celery_task_id),
        what="the cancelled task to end",
        timeout=WAIT_SECONDS,
    )
    (succeeded,) = rig.events.of_type("task-succeeded", task.celery_task_id)
    assert succeeded["result"] == "'cancelled'"
    assert rig.runtime.store.get(task.task_id).status == TaskStatus.CANCELLED  # type: ignore[union-attr]


def test_the_worker_log_is_json_with_the_task_on_every_line(rig: Rig) -> None:
    ok = rig.run("noop", {})
    failed = rig.run("fail", {"message": "kaboom"})
    lines = rig.log_lines()  # every line parses as JSON

    for record in (ok, failed):
        of_task = [line for line in lines if line.get("task_id") == record.task_id]
        events = [line["event"] for line in of_task]
        # Celery's own lines (received, succeeded / raised expected) carry it too.
        assert any(e.startswith(f"Task switchyard.tool.{record.tool_id}[") for e in events)
        assert any("received" in e for e in events if e.startswith("Task "))
        ours = [line for line in of_task if line["logger"].startswith("execution.")]
        assert ours, events
        for line in ours:
            assert (line["tool_id"], line["backend"], line["attempt"]) == (
                record.tool_id,
                "celery",
                1,
            )
        for line in of_task:
            assert line["tool_id"] == record.tool_id, line
    assert any(
        line["event"] == "task.completed" for line in lines if line.get("task_id") == ok.task_id
    )

    # The failure: one WARNING line, no traceback anywhere.
    loud = [
        line
        for line in lines
        if line.get("task_id") == failed.task_id
        and line["level"] in ("warning", "error", "critical")
    ]
    assert [line["event"] for line in loud] == ["task.tool_raised"]
    assert "Traceback" not in rig.worker.log()
    assert not [line for line in lines if line["level"] in ("error", "critical")]


def test_a_tools_print_and_logging_are_info_lines_of_its_task(rig: Rig) -> None:
    record = rig.run("chatty", {})
    lines = [line for line in rig.log_lines() if line.get("task_id") == record.task_id]

    said = {line["event"]: line for line in lines}
    printed, logged = said["chatty printed this"], said["chatty logged this"]
    assert (printed["logger"], printed["level"]) == ("celery.redirected", "info")
    assert (logged["logger"], logged["level"]) == ("chatty.tool", "info")
    for line in (printed, logged):
        assert (line["tool_id"], line["backend"], line["attempt"]) == ("chatty", "celery", 1)
