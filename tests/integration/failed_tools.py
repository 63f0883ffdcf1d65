"""The failed-tasks test's tool: `fails-once` writes its ledger row (fault_tools.py), then fails
its first attempt and completes any later one, so a task retried by hand completes. Loaded by
the API and workers through SWITCHYARD_TOOLS."""

from __future__ import annotations

from typing import Any

from execution.tools.registry import ToolContext, tool
from tests.integration.fault_tools import write_ledger


@tool("fails-once")
def fails_once(ctx: ToolContext) -> dict[str, Any]:
    """Write a ledger row; raise on the first attempt, return on any later one."""
    write_ledger(ctx)
    if ctx.attempt == 1:
        raise RuntimeError("the first attempt fails, on purpose")
    return {"attempt": ctx.attempt}
