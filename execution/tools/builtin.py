"""Built-in tools that exercise every path: success, progress, long runs, failure, real data."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from execution.tools.find_duplicates import find_duplicates
from execution.tools.profile_csv import profile_csv
from execution.tools.registry import ToolContext, tool

__all__ = ["fail", "find_duplicates", "noop", "probe", "profile_csv", "sleep"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SleepPayload(_Strict):
    """How long to sleep and in how many progress steps."""

    seconds: float = Field(default=1.0, ge=0, le=3600)
    steps: int = Field(default=10, ge=1, le=1000)


class FailPayload(_Strict):
    """What the failure says, and after how much progress it happens."""

    message: str = Field(default="the fail tool failed, as asked", max_length=2000)
    after_percent: float = Field(default=0, ge=0, le=100)


class ProbePayload(_Strict):
    """Which drill sent the probe, its sequence number, and how long it works."""

    drill: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0)
    seconds: float = Field(default=0.05, ge=0, le=60)


class ToolFailure(RuntimeError):
    """Raised by the `fail` tool."""


@tool("noop", description="Does nothing and returns at once: measures the machinery itself.")
def noop(ctx: ToolContext) -> dict[str, Any]:
    """Return an empty result."""
    return {"ok": True}


@tool("sleep", payload_model=SleepPayload)
def sleep(ctx: ToolContext) -> dict[str, Any]:
    """Sleep for `seconds`, reporting progress in `steps` steps."""
    seconds = float(ctx.payload["seconds"])
    steps = int(ctx.payload["steps"])
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        ctx.progress(100 * step / steps, f"slept step {step} of {steps}")
    return {"slept_seconds": seconds}


@tool("fail", payload_model=FailPayload)
def fail(ctx: ToolContext) -> dict[str, Any]:
    """Raise ToolFailure with `message`, after reporting `after_percent` progress."""
    if ctx.payload["after_percent"]:
        ctx.progress(ctx.payload["after_percent"], "about to fail")
    raise ToolFailure(ctx.payload["message"])


@tool("probe", payload_model=ProbePayload)
def probe(ctx: ToolContext) -> dict[str, Any]:
    """A `switchyard drill` probe: sleeps `seconds`, returns its drill id and sequence number."""
    time.sleep(float(ctx.payload["seconds"]))
    return {"drill": ctx.payload["drill"], "seq": ctx.payload["seq"]}
