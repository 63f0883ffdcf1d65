"""The API baselines, served the way `switchyard serve` serves the API.

`python -m benchmarks.trivial_app` (PORT from the environment): one uvicorn worker, the same
logging setup, the same request body model.

- `POST /tasks` only validates the body and answers: what FastAPI alone costs.
- `POST /tasks/raw`, when DATABASE_URL is set: the same, made durable by hand. One transaction
  inserts the task row QUEUED (every column Switchyard fills, as it fills them) and its CREATED
  and QUEUED events into Switchyard's own migrated schema, with hand-written SQL through the
  stdlib `sqlite3` (Switchyard's PRAGMAs) or psycopg 3. Nothing runs the task: it is the cost of
  the commit, to set against everything else `POST /tasks` does.

The raw handler is a sync `def`, like Switchyard's `create_task`, so both pay the same hop to
FastAPI's threadpool and the difference is the work, not the threading model. Each worker
thread keeps its own connection (a DB-API connection must not be shared by threads running at
once); an async handler with one connection and a lock would run the blocking commit on the
event loop and stall every other request for its duration. On SQLite, writers take turns on a
process lock, as Switchyard's store does, instead of meeting SQLite's sleeping busy handler.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, status

from api.schemas import TaskCreate
from benchmarks.bare_driver import BareStore
from execution.database import migrate
from execution.logs import configure_logging

USER_ID = "benchmark"
BACKEND = "thread"
BUCKETS = 10_000
# Every column of `tasks` and what Switchyard writes in it for a new task handed to the thread
# backend at once; "?" are the parameters (see `_params`), the rest is fixed.
TASK_VALUES = {
    "task_id": "?",
    "user_id": f"'{USER_ID}'",
    "tool_id": "?",
    "status": "'QUEUED'",
    "progress": "0",
    "message": "'queued'",
    "priority": "?",
    "payload": "?",
    "result": "NULL",
    "error_code": "NULL",
    "error_message": "NULL",
    "backend": f"'{BACKEND}'",
    "celery_task_id": "NULL",
    "attempts": "0",
    "attempts_before_retry": "0",
    "lease_owner": "NULL",
    "lease_expires_at": "NULL",
    "run_after": "NULL",
    "dispatched_at": "?",
    "cancel_requested_at": "NULL",
    "idempotency_key": "NULL",
    "rollout_bucket": "?",
    "rollout_percentage": "0.0",
    "created_at": "?",
    "queued_at": "?",
    "processing_started_at": "NULL",
    "completed_at": "NULL",
    "failed_at": "NULL",
    "updated_at": "?",
}
INSERT_TASK = (
    f"INSERT INTO tasks ({', '.join(TASK_VALUES)}) VALUES ({', '.join(TASK_VALUES.values())})"  # noqa: S608
)
EVENTS = (
    "INSERT INTO task_events (task_id, seq, status, progress, message, at) VALUES "
    "(?, 1, 'CREATED', 0, 'created', ?), (?, 2, 'QUEUED', 0, 'queued', ?)"
)

Insert = Callable[[str, str, int, dict[str, Any], int, datetime], None]


def create_trivial_app(database_url: str | None = None) -> FastAPI:
    """POST /tasks that validates the body and returns at once; POST /tasks/raw that also
    inserts the task by hand into `database_url` (migrated here), if given; GET /health."""
    app = FastAPI(title="trivial")

    @app.post("/tasks", status_code=status.HTTP_201_CREATED)
    async def create(body: TaskCreate) -> dict[str, Any]:
        return {"task_id": str(uuid.uuid4()), "tool_id": body.tool_id, "status": "QUEUED"}

    if database_url is not None:
        insert = raw_inserter(database_url)

        @app.post("/tasks/raw", status_code=status.HTTP_201_CREATED)
        def create_raw(body: TaskCreate) -> dict[str, Any]:
            task_id = uuid.uuid4()
            priority = body.priority if body.priority is not None else 0
            bucket = task_id.int % BUCKETS
            insert(str(task_id), body.tool_id, priority, body.payload, bucket, datetime.now(UTC))
            return {"task_id": str(task_id), "tool_id": body.tool_id, "status": "QUEUED"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def raw_inserter(database_url: str) -> Insert:
    """Migrate `database_url` to Switchyard's schema; a function committing one new task."""
    migrate(database_url)
    store = BareStore.of(database_url)
    task_sql, event_sql = store.sql(INSERT_TASK), store.sql(EVENTS)
    local = threading.local()
    # SQLite: one writer at a time, handed over on a lock, as Switchyard's store does.
    write_turn: AbstractContextManager[Any] = threading.Lock() if store.sqlite else nullcontext()

    def connection() -> Any:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = store.connect()
        return conn

    def insert(
        task_id: str, tool_id: str, priority: int, payload: Any, bucket: int, now: datetime
    ) -> None:
        at = store.stamp(now)  # on SQLite, the text SQLAlchemy stores: rows read back alike
        conn = connection()
        with write_turn:
            conn.execute(
                task_sql, _params(task_id, tool_id, priority, store.json(payload), bucket, at)
            )
            conn.execute(event_sql, (task_id, at, task_id, at))
            conn.commit()

    return insert


def _params(
    task_id: str, tool_id: str, priority: int, payload: Any, bucket: int, at: Any
) -> tuple[Any, ...]:
    """The parameters of INSERT_TASK, in the order of its "?"s."""
    return (task_id, tool_id, priority, payload, at, bucket, at, at, at)


def main() -> None:
    """Serve on 127.0.0.1:$PORT; POST /tasks/raw too if DATABASE_URL is set."""
    configure_logging(level="INFO", json_output=False)
    uvicorn.run(
        create_trivial_app(os.environ.get("DATABASE_URL") or None),
        host="127.0.0.1",
        port=int(os.environ["PORT"]),
        log_config=None,
    )


if __name__ == "__main__":
    main()
