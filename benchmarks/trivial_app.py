"""The API baseline: a trivial FastAPI endpoint, served the way `switchyard serve` serves the API.

`python -m benchmarks.trivial_app` (PORT from the environment): one uvicorn worker, the same
logging setup, the same request body model; the handler only answers.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import uvicorn
from fastapi import FastAPI, status

from api.schemas import TaskCreate
from execution.logs import configure_logging


def create_trivial_app() -> FastAPI:
    """POST /tasks that validates the body and returns at once; GET /health for readiness."""
    app = FastAPI(title="trivial")

    @app.post("/tasks", status_code=status.HTTP_201_CREATED)
    async def create(body: TaskCreate) -> dict[str, Any]:
        return {"task_id": str(uuid.uuid4()), "tool_id": body.tool_id, "status": "QUEUED"}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    """Serve on 127.0.0.1:$PORT."""
    configure_logging(level="INFO", json_output=False)
    uvicorn.run(
        create_trivial_app(), host="127.0.0.1", port=int(os.environ["PORT"]), log_config=None
    )


if __name__ == "__main__":
    main()
