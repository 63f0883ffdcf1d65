"""An app for the failed-tasks tests: an inline thread backend, a recording Celery one, and
keys for an operator and two users; tasks of `fail` or `divide` have FAILED when POST returns."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import update

from api.app import create_app
from api.keys import Role
from api.runtime import Runtime
from backends.testing import InlineBackend, RecordingBackend
from dispatch.rollout.control import RolloutChange
from execution.database import make_engine, upgrade
from execution.executor import TaskExecutor
from execution.records import TASKS
from execution.status import TaskStatus
from execution.store import TaskStore
from tests.api.conftest import api_settings
from tests.tools import Gate, build_registry


@dataclass
class Stack:
    """The app over an inline thread backend and a recording Celery one, and its keys."""

    runtime: Runtime
    client: TestClient
    celery: RecordingBackend
    keys: dict[str, dict[str, str]]

    def as_(self, who: str) -> dict[str, str]:
        """Headers of `who`'s key: "ops" (an operator), "alice" or "bob" (users)."""
        return self.keys[who]

    def failed(self, who: str, tool_id: str = "fail", **payload: Any) -> str:
        """A task of `who` that FAILED on threads; its id."""
        answer = self.client.post(
            "/tasks", json={"tool_id": tool_id, "payload": payload}, headers=self.as_(who)
        )
        assert answer.status_code == 201, answer.text
        task_id: str = answer.json()["task_id"]
        record = self.runtime.store.get(task_id)
        assert record is not None
        assert record.status is TaskStatus.FAILED
        return task_id

    def listed(self, who: str = "ops", **params: Any) -> list[str]:
        """Ids GET /tasks answers with these filters."""
        answer = self.client.get("/tasks", params=params, headers=self.as_(who))
        assert answer.status_code == 200, answer.text
        return [task["task_id"] for task in answer.json()["items"]]

    def retry(self, who: str = "ops", **params: Any) -> dict[str, Any]:
        """POST /tasks/retry's answer, which must be 200."""
        answer = self.client.post("/tasks/retry", params=params, headers=self.as_(who))
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def rollout(self, percentage: float) -> None:
        """Send that share of new (and retried) tasks to Celery."""
        state = self.runtime.rollout.store.load()
        assert state is not None
        self.runtime.rollout_control.set(
            RolloutChange(percentage=percentage),
            actor="ops",
            reason="test",
            expected_version=state.version,
        )

    def failed_ago(self, task_id: str, ago: timedelta) -> None:
        """Make `task_id` look as if it failed `ago`."""
        with self.runtime.engine.begin() as conn:
            conn.execute(
                update(TASKS)
                .where(TASKS.c.task_id == task_id)
                .values(updated_at=datetime.now(UTC) - ago)
            )


@contextmanager
def failed_stack(tmp_path: Path) -> Iterator[Stack]:
    """Threads at 0 % Celery; keys for an operator and two users."""
    settings = api_settings(tmp_path, use_celery=True)
    registry = build_registry(Gate())
    engine = make_engine(settings.database_url)
    upgrade(engine)
    executor = TaskExecutor(store=TaskStore(engine), registry=registry, data_dir=tmp_path)
    celery = RecordingBackend(name="celery")
    runtime = Runtime.build(
        settings, backends={"thread": InlineBackend(executor), "celery": celery}, registry=registry
    )
    keys = {
        who: {"Authorization": f"Bearer {runtime.keys.create(user_id=who, role=role).token}"}
        for who, role in (("ops", Role.OPERATOR), ("alice", Role.USER), ("bob", Role.USER))
    }
    with TestClient(create_app(runtime)) as client:
        yield Stack(runtime, client, celery, keys)
    engine.dispose()
