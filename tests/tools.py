"""The tools the tests run, in one place; `build_registry` adds them to the built-ins."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from execution.tools.parallel import (
    BatchContext,
    BatchOutcome,
    OnBatchFailure,
    ParallelJob,
    parallel_tool,
)
from execution.tools.registry import (
    RetryPolicy,
    Tool,
    ToolContext,
    ToolRegistry,
    load_registry,
    tool,
)

GATE_TIMEOUT = 10.0
"""A gate nobody opens fails its task instead of holding a worker thread forever."""


class ChattyPayload(BaseModel):
    """How many progress calls to make, all with the same message."""

    model_config = ConfigDict(extra="forbid")

    calls: int = 10_000
    message: str | None = "working"


@tool("exits")
def exits(ctx: ToolContext) -> dict[str, Any]:
    """Call sys.exit, as a tool wrapping an argparse-style CLI might."""
    raise SystemExit(2)


@tool("echo")
def echo(ctx: ToolContext) -> dict[str, Any]:
    """Return what the tool was given."""
    return {"task_id": ctx.task_id, "attempt": ctx.attempt, "payload": ctx.payload}


@tool("urgent", priority=7)
def urgent(ctx: ToolContext) -> dict[str, Any]:
    """A tool whose tasks default to priority 7."""
    return {}


@tool("chatty", payload_model=ChattyPayload)
def chatty(ctx: ToolContext) -> dict[str, Any]:
    """Report progress `calls` times in tiny, even steps."""
    calls = int(ctx.payload["calls"])
    for call in range(1, calls + 1):
        ctx.progress(100 * call / calls, ctx.payload["message"])
    return {"calls": calls}


@tool("divide")
def divide(ctx: ToolContext) -> dict[str, Any]:
    """Divide 1 by `divisor` (0 unless given): an ordinary bug in an ordinary tool."""
    return {"ratio": 1 / int(ctx.payload.get("divisor", 0))}


@tool("returns-set")
def returns_set(ctx: ToolContext) -> Any:
    """Return something json.dumps refuses."""
    return {"values": {1, 2}}


@tool("returns-nan")
def returns_nan(ctx: ToolContext) -> Any:
    """Return a float that is not valid JSON."""
    return {"value": float("nan")}


@tool("tick-until-stopped")
def tick_until_stopped(ctx: ToolContext) -> dict[str, Any]:
    """Report progress in a loop until the executor stops the tool (or 10 s pass)."""
    deadline = time.monotonic() + GATE_TIMEOUT
    while time.monotonic() < deadline:
        ctx.progress(1, "ticking")
    return {"stopped": False}


@tool("flaky", retry=RetryPolicy(max_retries=3, backoff=0, jitter=False))
def flaky(ctx: ToolContext) -> dict[str, Any]:
    """Raise ConnectionError on the first `failures` attempts (2 unless given), then succeed."""
    if ctx.attempt <= int(ctx.payload.get("failures", 2)):
        raise ConnectionError(f"attempt {ctx.attempt}: upstream refused")
    return {"attempt": ctx.attempt}


@tool("picky", retry=RetryPolicy(max_retries=3, retry_on=(ConnectionError,), backoff=0))
def picky(ctx: ToolContext) -> dict[str, Any]:
    """Retries only ConnectionError, and raises ValueError: a bug is not worth retrying."""
    raise ValueError("bad input")


HUNG = threading.Event()
"""Never set by a test: what a `hangs` task waits on (for GATE_TIMEOUT at most)."""

_HANGING: set[threading.Thread] = set()
"""The threads inside `hangs` now: abandoned by their executor, they outlive their test."""


@tool("hangs", time_limit=1)
def hangs(ctx: ToolContext) -> dict[str, Any]:
    """Ignore every signal and block, past its one-second hard limit."""
    _HANGING.add(threading.current_thread())
    HUNG.wait(GATE_TIMEOUT)
    return {"woke": True}


def wake_hung_threads() -> None:
    """End every `hangs` call still blocking, and wait for its thread: left alone it would wake
    up to GATE_TIMEOUT later, in another test, and log into that test's captured output."""
    if not _HANGING:
        return
    HUNG.set()
    for thread in list(_HANGING):
        thread.join(GATE_TIMEOUT)
    _HANGING.clear()
    HUNG.clear()


@tool("silent")
def silent(ctx: ToolContext) -> dict[str, Any]:
    """Never report progress; return once told to stop (or after GATE_TIMEOUT)."""
    stopped = ctx.stop_requested.wait(GATE_TIMEOUT)
    return {"stopped": stopped}


class Gate:
    """The `gate` tool: its tasks wait until the test opens the gate, in the order they ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self._opened = threading.Event()

    def open(self) -> None:
        """Let every waiting and future `gate` task finish."""
        self._opened.set()

    def __call__(self, ctx: ToolContext, /) -> dict[str, Any]:
        self.ran.append(ctx.task_id)
        if not self._opened.wait(GATE_TIMEOUT):
            raise TimeoutError("the test never opened the gate")
        return {"position": self.ran.index(ctx.task_id)}

    def as_tool(self) -> Tool:
        """This gate, registered as the `gate` tool."""
        return Tool(tool_id="gate", handler=self, description="Waits for the test.")


def build_registry(gate: Gate) -> ToolRegistry:
    """The built-in tools, the tools of this module, and `gate`."""
    loaded = load_registry(["execution.tools.builtin", __name__])
    return ToolRegistry([*loaded.values(), gate.as_tool()])


class SquaresPayload(BaseModel):
    """A parallel job of `n` batches; which of them fail, and how long each works."""

    model_config = ConfigDict(extra="forbid")

    n: int = 8
    flaky: dict[str, int] = {}
    """Batch number -> how many of its first attempts raise ConnectionError (retried)."""
    broken: list[int] = []
    """Batches that always raise ValueError (never retried)."""
    unstorable: list[int] = []
    """Batches that return a result JSON cannot hold (a set)."""
    seconds: float = 0.0
    """How long each batch works, in ten progress steps."""


class _Peak:
    """How many batches of `squares` ran at once in this process, at most."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def __enter__(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self.now -= 1


SQUARES_PEAK = _Peak()


class Squares(ParallelJob):
    """Square each of 0..n-1 in its own batch; the finalizer sums them."""

    def plan(self, ctx: ToolContext) -> list[Any]:
        return [{"x": x} for x in range(int(ctx.payload["n"]))]

    def run_batch(self, ctx: BatchContext) -> Any:
        with SQUARES_PEAK:
            if ctx.attempt <= int(ctx.payload["flaky"].get(str(ctx.batch_no), 0)):
                raise ConnectionError(f"batch {ctx.batch_no} flaked on attempt {ctx.attempt}")
            if ctx.batch_no in ctx.payload["broken"]:
                raise ValueError(f"batch {ctx.batch_no} is broken")
            seconds = float(ctx.payload["seconds"])
            for step in range(1, 11):
                if seconds:
                    time.sleep(seconds / 10)
                ctx.progress(step * 10)
            if ctx.batch_no in ctx.payload["unstorable"]:
                return {"square": {ctx.batch["x"]}}
            return {"square": ctx.batch["x"] ** 2}

    def finalize(self, ctx: ToolContext, outcomes: Sequence[BatchOutcome]) -> Any:
        return {
            "sum": sum(o.result["square"] for o in outcomes if o.ok),
            "failed": [o.batch_no for o in outcomes if not o.ok],
        }


_RETRY_CONNECTION = RetryPolicy(max_retries=2, retry_on=(ConnectionError,), backoff=0, jitter=False)
squares = parallel_tool("squares", payload_model=SquaresPayload, retry=_RETRY_CONNECTION)(Squares)
squares_partial = parallel_tool(
    "squares-partial",
    payload_model=SquaresPayload,
    retry=_RETRY_CONNECTION,
    on_batch_failure=OnBatchFailure.PARTIAL,
)(Squares)
