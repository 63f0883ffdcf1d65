"""A process of its own that holds N queued thread-backend tasks and reports its memory.

`python -m benchmarks.memory_probe --tasks N --database-url URL` prints one JSON object. It runs
apart from the benchmark so nothing else the run did sits in the figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from api.runtime import Runtime
from api.settings import Settings
from dispatch.dispatcher import NewTask
from execution.logs import configure_logging
from execution.tools.registry import Tool, ToolContext, ToolRegistry, load_registry

WARMUP_TASKS = 500
HOLD_TIMEOUT = 600.0
POLL_SECONDS = 0.005


class Hold:
    """The `hold` tool: keeps its worker thread busy until released."""

    def __init__(self) -> None:
        self.released = threading.Event()

    def __call__(self, ctx: ToolContext, /) -> dict[str, Any]:
        self.released.wait(HOLD_TIMEOUT)
        return {}


def measure(*, tasks: int, database_url: str, data_dir: Path) -> dict[str, object]:
    """RSS with every worker thread held, before and after `tasks` noop tasks are submitted."""
    hold = Hold()
    builtin = load_registry(["execution.tools.builtin"])
    registry = ToolRegistry([*builtin.values(), Tool(tool_id="hold", handler=hold)])
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        use_celery=False,
        background_queue_size=tasks + WARMUP_TASKS + 1_000,
        switchyard_data_dir=data_dir,
        shutdown_timeout=0,
    )
    runtime = Runtime.build(settings, registry=registry)
    runtime.prepare_database()
    runtime.start()
    backend, process = runtime.backends["thread"], psutil.Process()
    try:
        _submit(runtime, "noop", WARMUP_TASKS)  # fills caches and the connection pool
        _wait(lambda: backend.health().counts["waiting"] == 0)
        _submit(runtime, "hold", settings.background_workers)
        _wait(lambda: backend.health().counts["running"] == settings.background_workers)
        gc.collect()
        before = process.memory_info().rss
        started = time.perf_counter()
        _submit(runtime, "noop", tasks)
        seconds = time.perf_counter() - started
        waiting = backend.health().counts["waiting"]
        gc.collect()
        after = process.memory_info().rss
    finally:
        hold.released.set()
        runtime.stop()  # queued tasks stay QUEUED in the database; the probe's file is thrown away
    return {
        "tasks": tasks,
        "waiting": waiting,
        "rss_before": before,
        "rss_after": after,
        "submit_seconds": seconds,
    }


def _submit(runtime: Runtime, tool_id: str, count: int) -> None:
    for _ in range(count):
        runtime.dispatcher.submit(NewTask(tool_id=tool_id, payload={}, user_id="bench"))


def _wait(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + HOLD_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the thread backend never reached the state the probe waits for")
        time.sleep(POLL_SECONDS)


def main() -> None:
    """Parse the arguments, measure, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    configure_logging(level="WARNING")  # stdout carries the JSON answer only
    print(
        json.dumps(
            measure(tasks=args.tasks, database_url=args.database_url, data_dir=args.data_dir)
        )
    )


if __name__ == "__main__":
    main()
