"""Tools with their own time limits, loaded by the parity suite's API runtimes and worker alike."""

from __future__ import annotations

import time
from typing import Any

from execution.tools.registry import RetryPolicy, ToolContext, tool

SOFT_LIMIT = 1


@tool("over-time", soft_time_limit=SOFT_LIMIT, time_limit=30)
def over_time(ctx: ToolContext) -> dict[str, Any]:
    """Sleep past the soft limit before reporting any progress."""
    time.sleep(SOFT_LIMIT * 2.5)
    ctx.progress(50, "halfway")
    return {"ok": True}


@tool("flaky-once", retry=RetryPolicy(max_retries=2, backoff=0, jitter=False))
def flaky_once(ctx: ToolContext) -> dict[str, Any]:
    """Fail the first attempt a third of the way in; the retry succeeds."""
    if ctx.attempt == 1:
        ctx.progress(30, "trying")
        raise ConnectionError("upstream refused")
    return {"attempt": ctx.attempt}


@tool("overrun", time_limit=2)
def overrun(ctx: ToolContext) -> dict[str, Any]:
    """Keep working, without a word, past the two-second hard limit."""
    time.sleep(4)
    return {"late": True}


@tool("sits")
def sits(ctx: ToolContext) -> dict[str, Any]:
    """Say nothing and wait to be told to stop (20 s at most)."""
    deadline = time.monotonic() + 20
    while not ctx.stop_requested.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"stopped": ctx.stop_requested.is_set()}
