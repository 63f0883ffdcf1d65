"""Small helpers shared by the unit tests: wait for a condition, make a task, call a tool."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from fastapi.testclient import TestClient

from api.app import create_app
from api.keys import Role
from api.runtime import Runtime
from execution.records import TaskRecord
from execution.store import TaskStore
from execution.tools.registry import Tool, ToolContext

T = TypeVar("T")

WAIT_SECONDS = 10.0
"""How long a test waits for something another thread does; generous, never asserted on."""


def wait_until(condition: Callable[[], T | None], *, what: str, timeout: float = WAIT_SECONDS) -> T:
    """Poll `condition` until it returns something truthy, and return that; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout}s waiting for {what}")
        time.sleep(0.005)


def queued_task(
    store: TaskStore,
    *,
    tool_id: str = "noop",
    payload: Any = None,
    priority: int = 0,
    backend: str = "thread",
) -> TaskRecord:
    """A task written straight into the store as QUEUED, bypassing the dispatcher."""
    return store.create_queued(
        task_id=str(uuid.uuid4()),
        user_id="tester",
        tool_id=tool_id,
        payload={} if payload is None else payload,
        priority=priority,
        backend=backend,
        rollout_bucket=None,
        rollout_percentage=None,
    )


class Paused:
    """A DispatchGate holding the tools given, as a process's paused rollout would."""

    def __init__(self, *tools: str) -> None:
        self.tools = frozenset(tools)

    def held_tools(self) -> frozenset[str]:
        """The held tools ("*": all)."""
        return self.tools


class RecordedProgress:
    """A `progress(pct, message)` that remembers every call instead of writing it."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str | None]] = []

    def __call__(self, percent: float, message: str | None = None) -> None:
        self.calls.append((percent, message))


def claim(store: TaskStore, task_id: str, *, lease_seconds: float = 30.0) -> TaskRecord | None:
    """Claim `task_id` as a test's own attempt would."""
    return store.claim(task_id, owner="test-host:1", lease_seconds=lease_seconds)


def call_tool(
    spec: Tool, payload: Any, *, data_dir: Path, progress: RecordedProgress | None = None
) -> Any:
    """Run a tool's handler directly, with its payload validated as the executor would."""
    context = ToolContext(
        task_id=str(uuid.uuid4()),
        attempt=1,
        payload=spec.validate_payload(payload),
        progress=progress or RecordedProgress(),
        data_dir=data_dir,
    )
    return spec.handler(context)


@contextmanager
def operator_client(runtime: Runtime) -> Iterator[TestClient]:
    """An HTTP client of the app over `runtime`, carrying a fresh operator key."""
    issued = runtime.keys.create(user_id="tester", role=Role.OPERATOR)
    with TestClient(create_app(runtime)) as client:
        client.headers["Authorization"] = f"Bearer {issued.token}"
        yield client
