"""Redis frozen (SIGSTOP: a network black hole, as a client sees it) under a real API process
and a real worker: submissions answer within a few seconds (503, or 201 if they got through),
reads and /health keep answering, submissions succeed again after SIGCONT, and no task row is
left waiting for a message that was never published.

Bounds here are generous upper bounds proving "does not hang", never claims about speed; the
measured times are printed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.keys import KeyStore, Role
from execution import database
from execution.status import TaskStatus
from execution.store import TaskFilter, TaskStore
from tests.helpers import wait_until
from tests.integration.servers import RedisServer, ServerUnavailable, free_port, start_redis
from tests.integration.workers import REPO_ROOT, WorkerProcess, start_worker, stop_process_group

pytestmark = [pytest.mark.integration, pytest.mark.faults]

FREEZE_SECONDS = 15.0
CONCURRENT_POSTS = 20
POST_BOUND = 6.0
"""A POST during the freeze answers within this (the broker timeouts allow about 2-3 s)."""
READ_BOUND = 2.0
"""GET /tasks and GET /health answer within this while the broker is frozen."""


@dataclass
class Call:
    """One HTTP call made during the freeze: what it was, how it ended, how long it took."""

    what: str
    status: int
    seconds: float
    body: dict[str, Any]


@dataclass
class Cluster:
    """A redis-server of the test's own, one `switchyard serve` and one worker on it."""

    redis: RedisServer
    api: subprocess.Popen[bytes]
    api_log: Path
    worker: WorkerProcess
    client: httpx.Client
    store: TaskStore
    posts: list[Call] = field(default_factory=list)
    """Every POST /tasks made, whenever."""

    def call(self, method: str, path: str, **kwargs: Any) -> Call:
        """Make one request and time it; a client-side timeout is a failed bound, not an error."""
        started = time.monotonic()
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            return Call(f"{method} {path}", 0, time.monotonic() - started, {})
        seconds = time.monotonic() - started
        return Call(f"{method} {path}", response.status_code, seconds, response.json())

    def post(self) -> Call:
        """Submit one noop task."""
        call = self.call("POST", "/tasks", json={"tool_id": "noop"})
        self.posts.append(call)
        return call


def _serve(
    env: dict[str, str], port: int, workdir: Path, log_path: Path
) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"API exited:\n{log_path.read_text(errors='replace')}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, what="the API to start", timeout=60)
    return process


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Everything on one SQLite file; every task goes to Celery."""
    try:
        redis = start_redis(tmp_path)  # our own: the session's server is not ours to freeze
    except ServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    url = f"sqlite:///{tmp_path / 'switchyard.db'}"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "DATABASE_URL": url,
        "REDIS_URL": redis.url,
        "USE_CELERY": "true",
        "CELERY_ROLLOUT_PERCENTAGE": "100",
        "LOG_LEVEL": "WARNING",
    }
    engine = database.make_engine(url)
    database.upgrade(engine)
    token = KeyStore(engine).create(user_id="freezer", role=Role.OPERATOR).token
    port = free_port()
    api_log = tmp_path / "api.log"
    api = _serve(env, port, tmp_path, api_log)
    worker = start_worker(
        env=env,
        broker_url=redis.url,
        hostname="freeze@localhost",
        log_path=tmp_path / "worker.log",
        concurrency=2,
    )
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        timeout=30,  # far above every bound: a hang shows as a failed bound, not a stuck test
        headers={"Authorization": f"Bearer {token}"},
    )
    built = Cluster(redis, api, api_log, worker, client, TaskStore(engine))
    try:
        yield built
    finally:
        os.kill(redis.process.pid, signal.SIGCONT)  # whatever happened, never leave it frozen
        client.close()
        worker.stop()
        stop_process_group(api, timeout=60)
        redis.stop()
        engine.dispose()


def _summary(calls: list[Call]) -> str:
    by_what: dict[str, list[Call]] = {}
    for call in calls:
        by_what.setdefault(call.what, []).append(call)
    return ", ".join(
        f"{what}: n={len(group)} max={max(c.seconds for c in group):.2f}s "
        f"statuses={sorted({c.status for c in group})}"
        for what, group in by_what.items()
    )


def test_a_frozen_broker_costs_a_submission_seconds_and_reads_keep_answering(
    cluster: Cluster,
) -> None:
    before = cluster.post()
    assert before.status == 201, before.body

    def before_done() -> bool:
        row = cluster.store.get(before.body["task_id"])
        return row is not None and row.status == TaskStatus.COMPLETED

    # Frozen only once nothing is in flight: a message the worker is taking from Redis at the
    # instant it freezes times out half-delivered and waits in Redis's unacked set for the
    # visibility timeout (its row stays QUEUED; the recovery sweep's republish is what fixes
    # that, and it is not what this test is about).
    wait_until(before_done, what="a task to run before the freeze", timeout=30)
    time.sleep(0.5)  # and its acknowledgement to reach Redis

    os.kill(cluster.redis.process.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    reads: list[Call] = []
    stop_reading = threading.Event()

    def keep_reading() -> None:
        # Reads and probes all through the freeze; a POST now and then too, so the breaker's
        # half-open trial is exercised while the broker is still frozen.
        while not stop_reading.is_set():
            reads.append(cluster.call("GET", "/tasks"))
            reads.append(cluster.call("GET", "/health"))
            reads.append(cluster.post())
            stop_reading.wait(0.5)

    reader = threading.Thread(target=keep_reading)
    reader.start()
    with ThreadPoolExecutor(CONCURRENT_POSTS) as pool:
        burst = list(pool.map(lambda _: cluster.post(), range(CONCURRENT_POSTS)))
    time.sleep(max(0.0, FREEZE_SECONDS - (time.monotonic() - frozen_at)))
    stop_reading.set()
    reader.join(timeout=60)
    assert not reader.is_alive()
    os.kill(cluster.redis.process.pid, signal.SIGCONT)
    during = burst + reads
    print(f"\nduring a {FREEZE_SECONDS:g}s freeze: {_summary(during)}")

    posts = [c for c in during if c.what == "POST /tasks"]
    assert all(c.status in (201, 503) for c in posts), _summary(posts)
    assert all(c.seconds < POST_BOUND for c in posts), _summary(posts)
    assert any(c.status == 503 for c in burst), "the freeze was not felt"
    for call in (c for c in posts if c.status == 503):
        assert call.body["task_id"]
    listing = [c for c in during if c.what == "GET /tasks"]
    assert listing
    assert all(c.status == 200 and c.seconds < READ_BOUND for c in listing), _summary(listing)
    health = [c for c in during if c.what == "GET /health"]
    assert all(c.status in (200, 503) and c.seconds < READ_BOUND for c in health), _summary(health)
    assert any(c.status == 503 and not c.body["backends"]["celery"]["ok"] for c in health)

    # Redis is back: submissions go through again once the breaker's cool-down has passed.
    thawed_at = time.monotonic()
    while cluster.post().status != 201:
        assert time.monotonic() - thawed_at < 30, "no submission succeeded after SIGCONT"
        time.sleep(0.25)
    print(f"first 201 {time.monotonic() - thawed_at:.1f}s after SIGCONT")
    after = [cluster.post() for _ in range(5)]
    assert [c.status for c in after] == [201] * 5
    wait_until(
        lambda: cluster.call("GET", "/health").status == 200, what="/health to recover", timeout=30
    )

    # Every task accepted (201) ran on the worker; every refused one (503) is CANCELLED/REJECTED
    # and stays so, even when Redis executed its LPUSH late, after the thaw.
    accepted = {c.body["task_id"] for c in cluster.posts if c.status == 201}
    rejected = {c.body["task_id"] for c in cluster.posts if c.status == 503}

    def settled() -> bool:
        rows = cluster.store.find(TaskFilter(user_id="freezer"), limit=1000, offset=0)
        return all(r.status in (TaskStatus.COMPLETED, TaskStatus.CANCELLED) for r in rows)

    wait_until(settled, what="every accepted task to complete", timeout=60)
    time.sleep(2)  # give a late-delivered message of a refused task the chance to misbehave
    rows = {
        r.task_id: r
        for r in cluster.store.find(TaskFilter(user_id="freezer"), limit=1000, offset=0)
    }
    assert set(rows) == accepted | rejected
    assert all(rows[t].status == TaskStatus.COMPLETED for t in accepted)
    assert all(
        (rows[t].status, rows[t].error_code) == (TaskStatus.CANCELLED, "REJECTED") for t in rejected
    )
    print(f"accepted={len(accepted)} rejected={len(rejected)}")


def test_startup_warns_when_redis_has_no_persistence(cluster: Cluster) -> None:
    # start_redis runs redis-server with `--save '' --appendonly no`, as the README shows.
    assert "broker.no_persistence" in cluster.api_log.read_text(errors="replace")
    wait_until(lambda: "broker.no_persistence" in cluster.worker.log(), what="the worker's warning")
