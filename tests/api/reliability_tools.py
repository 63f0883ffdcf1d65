"""Tools and an app for the cancel, retry and idempotency tests: a real thread pool, SQLite.

The tools are plain module-level functions (retries, failures) plus `Tools`, whose tools block
or loop under the test's control and record how each attempt was stopped.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.app import create_app
from api.runtime import Runtime
from execution.tools.registry import (
    RetryPolicy,
    Tool,
    ToolContext,
    ToolRegistry,
    load_registry,
    tool,
)
from tests.api.conftest import ApiUnderTest, api_settings

TOOL_TIMEOUT = 10.0
"""A tool the test forgets to release ends on its own instead of holding a thread forever."""

FAST_RETRIES = RetryPolicy(max_retries=2, retry_on=(ConnectionError,), backoff=0.05, jitter=False)

RELIABLE_SETTINGS: dict[str, Any] = {
    "background_workers": 2,
    # A heartbeat every 0.2 s notices a cancel quickly; the lease is long enough that a busy
    # test machine never loses an attempt to a late heartbeat.
    "task_heartbeat_seconds": 0.2,
    "task_lease_seconds": 3.0,
    # The thread pool picks up a retry whose backoff is over at its sweep.
    "thread_sweep_seconds": 0.05,
    "recovery_sweep_seconds": 0.5,
    "shutdown_timeout": 5.0,
}


class FlakyError(ConnectionError):
    """What `flaky` raises: retryable under FAST_RETRIES."""


@tool("flaky", retry=FAST_RETRIES)
def flaky(ctx: ToolContext) -> dict[str, Any]:
    """Fail the first `failures` attempts (2 unless given) with a retryable error, then succeed."""
    failures = int(ctx.payload.get("failures", 2))
    if ctx.attempt <= failures:
        raise FlakyError(f"attempt {ctx.attempt} of {failures} that fail")
    return {"attempt": ctx.attempt}


@tool("picky", retry=FAST_RETRIES)
def picky(ctx: ToolContext) -> dict[str, Any]:
    """Raise an error its retry policy does not retry on."""
    raise ValueError("not a connection problem")


@tool("fails-once")
def fails_once(ctx: ToolContext) -> dict[str, Any]:
    """Fail the first attempt (no retry policy), succeed on any later one."""
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"attempt": ctx.attempt}


@tool("slow-retry", retry=RetryPolicy(max_retries=1, backoff=3600, jitter=False))
def slow_retry(ctx: ToolContext) -> dict[str, Any]:
    """Always fail; the one retry waits an hour (no test waits for it)."""
    raise RuntimeError(f"attempt {ctx.attempt} fails")


class Tools:
    """Tools the test controls: each records its task when it starts and how it stopped."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: list[str] = []
        self.stopped: dict[str, str] = {}
        """task_id -> how its attempt ended in the tool: "returned" or an exception's name."""
        self.observe: Callable[[str], object] | None = None
        """Called by `waits-for-stop` with its task_id the moment it is told to stop."""
        self.seen_on_stop: dict[str, object] = {}
        """task_id -> what `observe` returned."""

    def blocks(self, ctx: ToolContext, /) -> dict[str, Any]:
        """Never call progress, never look at stop_requested: wait for `release`."""
        self.started.append(ctx.task_id)
        released = self.release.wait(TOOL_TIMEOUT)
        self.stopped[ctx.task_id] = "returned"
        return {"released": released}

    def waits_for_stop(self, ctx: ToolContext, /) -> dict[str, Any]:
        """Never call progress; return as soon as the executor asks the tool to stop."""
        self.started.append(ctx.task_id)
        stopped = ctx.stop_requested.wait(TOOL_TIMEOUT)
        if self.observe is not None:
            self.seen_on_stop[ctx.task_id] = self.observe(ctx.task_id)
        self.stopped[ctx.task_id] = "returned"
        return {"stopped": stopped}

    def progress_loop(self, ctx: ToolContext, /) -> dict[str, Any]:
        """Report progress in a loop, each call a new whole percent so each call is written."""
        self.started.append(ctx.task_id)
        deadline = time.monotonic() + TOOL_TIMEOUT
        step = 0
        try:
            while time.monotonic() < deadline:
                step += 1
                ctx.progress(1 + step % 2, f"step {step}")
                time.sleep(0.01)
        except BaseException as exc:
            self.stopped[ctx.task_id] = type(exc).__name__
            raise
        self.stopped[ctx.task_id] = "returned"
        return {"steps": step}

    def registry(self) -> ToolRegistry:
        """The built-in tools, this module's tools, and these."""
        loaded = load_registry(["execution.tools.builtin", __name__])
        controlled = [
            Tool(tool_id="blocks", handler=self.blocks),
            Tool(tool_id="waits-for-stop", handler=self.waits_for_stop),
            Tool(tool_id="progress-loop", handler=self.progress_loop),
        ]
        return ToolRegistry([*loaded.values(), *controlled])


@contextmanager
def reliable_api(tmp_path: Path, tools: Tools, **overrides: Any) -> Iterator[ApiUnderTest]:
    """The app over a real, started thread pool and its own SQLite file, as `serve` runs it;
    settings are RELIABLE_SETTINGS changed by `overrides`. The client sends no key."""
    settings = api_settings(tmp_path, **{**RELIABLE_SETTINGS, **overrides})
    runtime = Runtime.build(settings, registry=tools.registry())
    runtime.prepare_database()
    with TestClient(create_app(runtime)) as client:
        try:
            yield ApiUnderTest(runtime=runtime, client=client, backend=runtime.backends["thread"])
        finally:
            tools.release.set()  # before shutdown: no tool thread stays blocked past the test
