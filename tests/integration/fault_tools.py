"""Tools for the fault tests: every run of one first writes (task id, attempt, pid, time) to a
`ledger` table, then works a little. The ledger has no uniqueness constraint on purpose: a task
run twice leaves two rows, which the tests count and explain instead of letting the database
hide them.

Loaded by the API processes and workers through SWITCHYARD_TOOLS; the ledger lives in the
database named by DATABASE_URL, next to the `tasks` table.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, text

from execution.database import make_engine
from execution.tools.registry import RetryPolicy, ToolContext, tool

LEDGER_DDL = (
    "CREATE TABLE IF NOT EXISTS ledger ("
    "task_id VARCHAR(64) NOT NULL, attempt INTEGER NOT NULL, "
    "pid INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL)"
)

HARD_LIMIT = 2
"""Seconds: the hard time limit of the overrunning and hanging tools."""
SOFT_LIMIT = 1
OVERRUN_RETRY = RetryPolicy(
    max_retries=2, retry_on=(Exception,), backoff=0.2, backoff_max=1.0, jitter=True
)
HANG_SECONDS = 180.0
"""How long `ledger-hang` blocks: longer than any fault test waits for anything."""

_engines: dict[int, Engine] = {}
_engines_lock = threading.Lock()


def ensure_ledger(engine: Engine) -> None:
    """Create the ledger table if nobody has yet (every writer and the reader call this)."""
    with engine.begin() as conn:
        conn.execute(text(LEDGER_DDL))


def _engine() -> Engine:
    # One engine per process: a Celery prefork child must not reuse its parent's connections.
    pid = os.getpid()
    with _engines_lock:
        engine = _engines.get(pid)
        if engine is None:
            engine = make_engine(os.environ["DATABASE_URL"])
            ensure_ledger(engine)
            _engines[pid] = engine
        return engine


def write_ledger(ctx: ToolContext) -> None:
    """The side effect under test: one committed row per execution of the tool."""
    with _engine().begin() as conn:
        conn.execute(
            text("INSERT INTO ledger (task_id, attempt, pid, at) VALUES (:t, :a, :p, :at)"),
            {"t": ctx.task_id, "a": ctx.attempt, "p": os.getpid(), "at": time.time()},
        )


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LedgerPayload(_Strict):
    """How long the tool works after writing its ledger row, in how many progress steps."""

    work_seconds: float = Field(default=0.2, ge=0, le=60)
    steps: int = Field(default=4, ge=1, le=100)


class OverrunPayload(LedgerPayload):
    """Attempts up to `overrun_attempts` outlive the hard limit; later ones finish normally."""

    overrun_attempts: int = Field(default=0, ge=0, le=100)
    overrun_seconds: float = Field(default=3 * HARD_LIMIT, ge=0, le=600)


def _work(ctx: ToolContext) -> dict[str, Any]:
    seconds, steps = float(ctx.payload["work_seconds"]), int(ctx.payload["steps"])
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        ctx.progress(100 * step / steps, f"step {step} of {steps}")
    return {"attempt": ctx.attempt, "pid": os.getpid()}


def _outlive(seconds: float) -> None:
    """Keep running past every limit: no progress calls, the stop signal ignored, and Celery's
    SoftTimeLimitExceeded (raised into the sleep) swallowed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # a tool that will not stop, on purpose
            time.sleep(0.05)


@tool("ledger", payload_model=LedgerPayload)
def ledger(ctx: ToolContext) -> dict[str, Any]:
    """Write a ledger row, then work `work_seconds` in `steps` progress steps."""
    write_ledger(ctx)
    return _work(ctx)


def _overrun(ctx: ToolContext) -> dict[str, Any]:
    write_ledger(ctx)
    if ctx.attempt <= int(ctx.payload["overrun_attempts"]):
        _outlive(float(ctx.payload["overrun_seconds"]))
    return _work(ctx)


@tool(
    "ledger-overrun",
    payload_model=OverrunPayload,
    time_limit=HARD_LIMIT,
    soft_time_limit=SOFT_LIMIT,
    retry=OVERRUN_RETRY,
)
def ledger_overrun(ctx: ToolContext) -> dict[str, Any]:
    """Write a ledger row; outlive the hard limit on the first `overrun_attempts` attempts."""
    return _overrun(ctx)


@tool(
    "ledger-overrun-celery",
    payload_model=OverrunPayload,
    time_limit=HARD_LIMIT,
    soft_time_limit=SOFT_LIMIT,
    retry=OVERRUN_RETRY,
)
def ledger_overrun_celery(ctx: ToolContext) -> dict[str, Any]:
    """The same as `ledger-overrun`, under another id so a rollout override sends it to Celery."""
    return _overrun(ctx)


@tool("ledger-hang", time_limit=HARD_LIMIT, soft_time_limit=SOFT_LIMIT)
def ledger_hang(ctx: ToolContext) -> dict[str, Any]:
    """Write a ledger row, then hang: no progress, the stop signal ignored, for minutes."""
    write_ledger(ctx)
    _outlive(HANG_SECONDS)
    return {"hung": True}
