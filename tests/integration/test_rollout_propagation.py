"""Two API processes and a worker on one database: a rollout change made through one API is
honoured by the other while tasks flow, a rollback empties Celery, and queued Celery tasks come
back to threads without being lost. The propagation delay is measured and printed here; the
bound is a benchmark's business (`make bench`), not a test's."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.keys import KeyStore, Role
from execution import database
from execution.records import TaskRecord
from execution.status import TaskStatus
from execution.store import TaskFilter, TaskStore
from tests.helpers import wait_until
from tests.integration.servers import RedisServer, free_port
from tests.integration.workers import (
    REPO_ROOT,
    WorkerProcess,
    start_worker,
    stop_process_group,
)

pytestmark = pytest.mark.integration


@dataclass
class Api:
    """One `switchyard serve` process and a client holding its own operator's key."""

    process: subprocess.Popen[bytes]
    client: httpx.Client
    user: str

    def post_noop(self) -> None:
        """Create one task."""
        response = self.client.post("/tasks", json={"tool_id": "noop"})
        assert response.status_code == 201, response.text

    def version(self) -> int:
        """The rollout version this process routes by."""
        body: dict[str, Any] = self.client.get("/rollout").json()
        return int(body["version"])


@dataclass
class Cluster:
    """The processes under test and the database they share."""

    apis: list[Api]
    worker: WorkerProcess | None
    store: TaskStore
    env: dict[str, str]
    broker: str
    workdir: Path

    def tasks_by(self, user: str) -> list[TaskRecord]:
        """Tasks one API process created, oldest first."""
        found = self.store.find(TaskFilter(user_id=user), limit=5000, offset=0)
        return sorted(found, key=lambda t: t.created_at)

    def start_worker(self) -> None:
        """A one-process worker on the shared database."""
        self.worker = start_worker(
            env=self.env,
            broker_url=self.broker,
            hostname=f"prop-{len(self.env)}@localhost",
            log_path=self.workdir / "worker.log",
            concurrency=1,
        )

    def stop_worker(self) -> None:
        """Warm shutdown of the worker."""
        if self.worker is not None:
            self.worker.stop()
            self.worker = None


def _serve(env: dict[str, str], port: int, workdir: Path, name: str) -> subprocess.Popen[bytes]:
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def answers() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, what=f"API {name} to start", timeout=60)
    return process


@pytest.fixture
def cluster(redis_server: RedisServer, tmp_path: Path) -> Iterator[Cluster]:
    """API a and b (USE_CELERY=true, 0 %), a worker, all on one SQLite file."""
    url = f"sqlite:///{tmp_path / 'switchyard.db'}"
    broker = redis_server.url.rsplit("/", 1)[0] + "/6"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "DATABASE_URL": url,
        "REDIS_URL": broker,
        "USE_CELERY": "true",
        "CELERY_ROLLOUT_PERCENTAGE": "0",
        "LOG_LEVEL": "WARNING",
        "THREAD_SWEEP_SECONDS": "0.5",
        "ROLLOUT_CHANGE_LIMIT": "100",
    }
    engine = database.make_engine(url)
    database.upgrade(engine)
    keys = KeyStore(engine)
    apis = []
    for name in ("a", "b"):
        port = free_port()
        process = _serve(env, port, tmp_path, name)
        token = keys.create(user_id=f"via-{name}", role=Role.OPERATOR).token
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            timeout=30,
            headers={"Authorization": f"Bearer {token}"},
        )
        apis.append(Api(process, client, f"via-{name}"))
    built = Cluster(apis, None, TaskStore(engine), env, broker, tmp_path)
    built.start_worker()
    yield built
    built.stop_worker()
    for api in apis:
        api.client.close()
        stop_process_group(api.process, timeout=60)
    engine.dispose()


def _change(api: Api, path: str, body: dict[str, Any]) -> datetime:
    """Make a rollout change through `api`; return when the server recorded it."""
    headers = {"If-Match": f'"{api.version()}"'} if path == "/rollout" else {}
    method = "PUT" if path == "/rollout" else "POST"
    response = api.client.request(method, path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    return datetime.fromisoformat(response.json()["updated_at"])


def _first_routed_at(
    tasks: list[TaskRecord], percentage: float, after: datetime, until: datetime | None = None
) -> TaskRecord:
    """The first task routed by the new percentage; every later one (until the next change)
    must be routed by it too: a process never goes back to an older rollout."""
    window = [t for t in tasks if t.created_at >= after and (until is None or t.created_at < until)]
    routed = [t for t in window if t.rollout_percentage == percentage]
    assert routed, f"no task routed at {percentage} % after {after}"
    first = routed[0]
    later = [t for t in window if t.created_at > first.created_at]
    assert all(t.rollout_percentage == percentage for t in later), "routing went back"
    return first


def test_both_processes_follow_a_change_and_a_rollback_made_through_one(
    cluster: Cluster,
) -> None:
    a, b = cluster.apis
    flowing = threading.Event()
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            a.post_noop()
            b.post_noop()
            flowing.set()
            stop.wait(0.02)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        flowing.wait(30)
        changed = _change(a, "/rollout", {"percentage": 50, "reason": "step 3 of the schedule"})
        wait_until(lambda: b.version() == 2, what="b to see version 2", timeout=30)
        wait_until(
            lambda: any(t.rollout_percentage == 50 for t in cluster.tasks_by(b.user)),
            what="b to route a task at 50 %",
            timeout=30,
        )
        stop.wait(1.0)  # a second of traffic at 50 %
        rolled = _change(b, "/rollout/rollback", {"reason": "error rate above 0.1 %"})
        wait_until(lambda: a.version() == 3, what="a to see the rollback", timeout=30)
        wait_until(
            lambda: any(
                t.rollout_percentage == 0 and t.created_at > rolled
                for t in cluster.tasks_by(a.user)
            ),
            what="a to route a task after the rollback",
            timeout=30,
        )
        stop.wait(1.0)  # a little more traffic after the rollback
    finally:
        stop.set()
        sender.join()

    on_b = _first_routed_at(cluster.tasks_by(b.user), 50, changed, until=rolled)
    on_a = _first_routed_at(cluster.tasks_by(a.user), 0, rolled)
    print(
        f"\npropagation: change via a seen by b after "
        f"{(on_b.created_at - changed).total_seconds():.3f}s; "
        f"rollback via b seen by a after {(on_a.created_at - rolled).total_seconds():.3f}s"
    )
    after_rollback = [
        t for api in (a, b) for t in cluster.tasks_by(api.user) if t.created_at > on_a.created_at
    ]
    assert after_rollback
    assert all(t.backend == "thread" for t in after_rollback)
    half = [t for t in cluster.tasks_by(b.user) if on_b.created_at <= t.created_at < rolled]
    # Routed to Celery = published with a Celery id (some may since have been handed back).
    assert {t.celery_task_id is not None for t in half} == {True, False}

    wait_until(
        lambda: (
            not cluster.store.find(TaskFilter(status=TaskStatus.QUEUED), limit=1, offset=0)
            and not cluster.store.find(TaskFilter(status=TaskStatus.PROCESSING), limit=1, offset=0)
        ),
        what="every task to end",
        timeout=120,
    )
    everything = cluster.tasks_by(a.user) + cluster.tasks_by(b.user)
    assert {t.status for t in everything} == {TaskStatus.COMPLETED}
    history = a.client.get("/rollout/history").json()
    assert [(e["action"], e["actor"], e["reason"]) for e in history[:2]] == [
        ("rollback", "via-b", "error rate above 0.1 %"),
        ("set", "via-a", "step 3 of the schedule"),
    ]


def test_tasks_queued_in_celery_at_a_rollback_come_back_to_threads_and_complete(
    cluster: Cluster,
) -> None:
    a, b = cluster.apis
    cluster.stop_worker()  # nothing consumes: tasks sent to Celery wait in Redis
    _change(a, "/rollout", {"percentage": 100, "reason": "all to celery"})
    wait_until(lambda: b.version() == 2, what="b to see 100 %", timeout=30)
    ids = []
    for api in (a, b, a, b):
        response = api.client.post("/tasks", json={"tool_id": "sleep", "payload": {"seconds": 0.2}})
        assert response.json()["backend"] == "celery"
        ids.append(response.json()["task_id"])
    _change(b, "/rollout/rollback", {"reason": "drill: celery workers down"})
    cluster.start_worker()  # the worker sees Celery switched off and hands each task back

    def all_done() -> bool:
        return all((t := cluster.store.get(i)) is not None and t.status.is_terminal for i in ids)

    wait_until(all_done, what="the handed-back tasks to finish on threads", timeout=120)
    for task_id in ids:
        task = cluster.store.get(task_id)
        assert task is not None
        assert (task.status, task.backend, task.attempts) == (TaskStatus.COMPLETED, "thread", 1)
        messages = [e.message or "" for e in cluster.store.events(task_id)]
        assert any(m.startswith("moved from celery to thread") for m in messages), messages
