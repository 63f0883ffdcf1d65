"""The purge tests' tool: `held` writes its ledger row (fault_tools.py), then runs until the file
its payload names exists, so a test keeps a task running, and the pool behind it busy, for as
long as it needs. Loaded by the API and workers through SWITCHYARD_TOOLS."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from execution.tools.registry import ToolContext, tool
from tests.integration.fault_tools import write_ledger

HOLD_SECONDS = 60.0
"""A test that never releases its task fails it instead of holding a worker forever."""


class HeldPayload(BaseModel):
    """The file whose creation releases the task."""

    model_config = ConfigDict(extra="forbid")

    release_file: str


@tool("held", payload_model=HeldPayload)
def held(ctx: ToolContext) -> dict[str, Any]:
    """Write a ledger row, then wait for the release file (HOLD_SECONDS at most)."""
    write_ledger(ctx)
    release = Path(ctx.payload["release_file"])
    deadline = time.monotonic() + HOLD_SECONDS
    while not release.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test never created {release}")
        time.sleep(0.05)
    return {"released": True}
