"""The fault tests' harness: a private redis-server, `switchyard serve` and `switchyard worker`
processes on one SQLite file, faults injected with signals, and the checks every fault test
makes on rows, events and the ledger (see fault_tools.py).

What a check proves, per task accepted with 201: it exists and ended within a bound (else it is
*lost*); it ended as the scenario expects; a FAILED one says why; a COMPLETED one has exactly
one COMPLETED event; and each execution of its tool (a ledger row) but the last one belongs to
an attempt whose history says it was killed (its lease expired: "attempt N lost its worker") or
timed out ("... after TIME_LIMIT_EXCEEDED"). Those re-executions are counted and printed, never
hidden; any other second execution is a failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import Engine, text

from api.keys import KeyStore, Role
from execution import database
from execution.records import TaskEvent, TaskRecord
from execution.status import TaskStatus
from execution.store import TaskFilter, TaskStore
from tests.integration.fault_tools import ensure_ledger
from tests.integration.servers import RedisServer, free_port, start_redis
from tests.integration.workers import REPO_ROOT, WorkerProcess, start_worker, stop_process_group

TOOLS = "execution.tools.builtin,tests.integration.fault_tools"

FAST_RECOVERY = {
    "TASK_LEASE_SECONDS": "3",
    "TASK_HEARTBEAT_SECONDS": "0.5",
    "RECOVERY_SWEEP_SECONDS": "0.5",
    "CELERY_REPUBLISH_SECONDS": "5",
    "THREAD_SWEEP_SECONDS": "0.5",
    "TASK_LOST_RETRIES": "5",
}
"""Recovery bounds short enough for a test: a lost attempt is noticed within seconds."""

TERMINAL_BOUND = 150.0
"""Seconds a test waits for every task to end: generous; speed is never asserted."""
START_BOUND = 60.0
POLL_SECONDS = 0.25

LOST = re.compile(r"attempt (\d+) (?:was )?lost")
TIMED_OUT = re.compile(r"retry (\d+) of \d+ in [0-9.]+s after TIME_LIMIT_EXCEEDED")
WORKER_LOST = "WORKER_LOST"
TIME_LIMIT_EXCEEDED = "TIME_LIMIT_EXCEEDED"
REJECTED = "REJECTED"
REPUBLISHED = "published again"
OPEN_STATUSES = (TaskStatus.QUEUED.value, TaskStatus.PROCESSING.value)


def tail(path: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log file."""
    try:
        text_ = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text_.splitlines()[-lines:])


def poll(condition: Callable[[], Any], *, what: str, timeout: float, rig: FaultRig) -> Any:
    """Poll `condition` every POLL_SECONDS until truthy; fail with the logs at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"gave up after {timeout:g}s waiting for {what}\n{rig.status_line()}\n"
                f"{rig.log_tails()}"
            )
        time.sleep(POLL_SECONDS)


# -- submissions -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Submission:
    """One POST /tasks and what came back; status_code 0 means no HTTP answer at all."""

    tool_id: str
    payload: dict[str, Any]
    status_code: int
    task_id: str | None
    backend: str | None
    detail: str
    answered_at: float
    """time.monotonic() when the answer came."""


class Submitter:
    """POST /tasks for each (tool_id, payload) from a few threads, in the background."""

    def __init__(
        self,
        api: ApiProcess,
        items: Sequence[tuple[str, dict[str, Any]]],
        *,
        threads: int,
        pace: float = 0.0,
    ) -> None:
        self._api = api
        self._pace = pace
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()
        self.done = 0
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="submit")
        self._futures: list[Future[Submission]] = []
        for tool_id, payload in items:
            future = self._pool.submit(self._post, tool_id, payload)
            future.add_done_callback(self._count)
            self._futures.append(future)

    def _count(self, _: Future[Submission]) -> None:
        with self._lock:
            self.done += 1

    def _client(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._api.new_client()
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _post(self, tool_id: str, payload: dict[str, Any]) -> Submission:
        if self._pace:
            time.sleep(self._pace)
        try:
            response = self._client().post("/tasks", json={"tool_id": tool_id, "payload": payload})
        except httpx.HTTPError as exc:
            return Submission(tool_id, payload, 0, None, None, repr(exc), time.monotonic())
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        return Submission(
            tool_id,
            payload,
            response.status_code,
            body.get("task_id"),
            body.get("backend"),
            response.text[:300],
            time.monotonic(),
        )

    def join(self) -> list[Submission]:
        """Every submission's answer, in the order given."""
        results = [future.result() for future in self._futures]
        self._pool.shutdown()
        for client in self._clients:
            client.close()
        return results


@dataclass
class Submitted:
    """Submissions sorted by what the client was told."""

    accepted: list[Submission]
    """201 (or 202): the task is Switchyard's to run."""
    rejected: list[Submission]
    """503: the client was told to try again; the row must end CANCELLED/REJECTED."""
    other: list[Submission]
    """Anything else: a failure of the test run."""

    @classmethod
    def of(cls, submissions: Sequence[Submission]) -> Submitted:
        """Sort `submissions`."""
        sorted_ = cls([], [], [])
        for s in submissions:
            if s.status_code in (201, 202) and s.task_id:
                sorted_.accepted.append(s)
            elif s.status_code == 503:
                sorted_.rejected.append(s)
            else:
                sorted_.other.append(s)
        return sorted_


# -- processes ---------------------------------------------------------------------------------


@dataclass
class ApiProcess:
    """One `switchyard serve` on a fixed port; restarted on the same port after a kill."""

    name: str
    port: int
    env: dict[str, str]
    workdir: Path
    token: str
    logs: list[Path]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where it listens."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's pid (also its process group)."""
        assert self.process is not None
        return self.process.pid

    def new_client(self) -> httpx.Client:
        """A client carrying the operator key."""
        return httpx.Client(
            base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {self.token}"}
        )

    def start(self) -> None:
        """Start it and wait until it answers /health (whatever the answer)."""
        log_path = self.workdir / f"api-{self.name}-{len(self.logs) + 1}.log"
        self.logs.append(log_path)
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "serve", "--port", str(self.port)],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_BOUND
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"API {self.name} exited with {self.process.returncode}:\n{tail(log_path)}"
                )
            try:
                httpx.get(f"{self.url}/health", timeout=2)
                return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"API {self.name} did not answer in {START_BOUND}s")
            time.sleep(0.1)

    def kill(self) -> None:
        """kill -9 its whole process group."""
        assert self.process is not None
        kill_group(self.process)

    def stop(self) -> None:
        """Graceful stop, SIGKILL if it lingers."""
        if self.process is not None:
            stop_process_group(self.process, timeout=15)

    def health(self) -> dict[str, Any]:
        """GET /health's body."""
        body: dict[str, Any] = httpx.get(f"{self.url}/health", timeout=10).json()
        return body


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process started with start_new_session and everything in its group (a Celery
    worker's prefork children too); return once the group is gone."""
    pgid = process.pid
    with suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise RuntimeError(f"process group {pgid} still alive 10s after SIGKILL")


def owner_pid(record: TaskRecord) -> int | None:
    """The pid in a lease owner "host:pid"."""
    if not record.lease_owner or ":" not in record.lease_owner:
        return None
    try:
        return int(record.lease_owner.rsplit(":", 1)[1])
    except ValueError:
        return None


def group_of(pid: int) -> int | None:
    """The process group of a live pid."""
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


# -- the rig -----------------------------------------------------------------------------------


@dataclass
class FaultRig:
    """Everything one fault test runs against, and how it breaks it."""

    workdir: Path
    redis: RedisServer
    engine: Engine
    store: TaskStore
    env: dict[str, str]
    token: str
    apis: list[ApiProcess] = field(default_factory=list)
    workers: list[WorkerProcess] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    started_workers: int = 0

    # processes

    def start_api(self, name: str = "api", **env: str) -> ApiProcess:
        """`switchyard serve` on a free port with the rig's settings (plus `env`)."""
        api = ApiProcess(
            name=name,
            port=free_port(),
            env={**self.env, **env},
            workdir=self.workdir,
            token=self.token,
            logs=self.logs,
        )
        self.apis.append(api)
        api.start()
        return api

    def start_worker(self, concurrency: int = 2) -> WorkerProcess:
        """A new `switchyard worker` (prefork), ready when it answers a ping."""
        self.started_workers += 1
        n = self.started_workers
        log_path = self.workdir / f"worker-{n}.log"
        self.logs.append(log_path)
        worker = start_worker(
            env=self.env,
            broker_url=self.redis.url,
            hostname=f"fault{n}@localhost",
            log_path=log_path,
            concurrency=concurrency,
        )
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: WorkerProcess) -> None:
        """kill -9 the worker and its prefork children."""
        kill_group(worker.process)
        self.workers.remove(worker)

    def stop_redis(self, sig: signal.Signals) -> None:
        """Stop redis-server with `sig` (SIGKILL: nothing saved; SIGTERM: a clean shutdown)."""
        self.redis.process.send_signal(sig)
        self.redis.process.wait(timeout=20)

    def start_redis_again(self) -> None:
        """A new, empty redis-server on the same port (no persistence, as before)."""
        self.redis = start_redis(self.workdir / "redis", port=self.redis.port)

    def redis_waiting(self) -> int:
        """Messages waiting in Redis's queues (every priority sub-queue of every queue)."""
        client = redis.Redis(port=self.redis.port, socket_timeout=5)
        try:
            waiting = 0
            for key in client.scan_iter(match="default*"):
                if client.type(key) == b"list":
                    waiting += int(client.llen(key))
            return waiting
        finally:
            client.close()

    def redis_canary(self, *, plant: bool = False) -> bool:
        """Whether Redis holds the canary key (planted first with `plant`): gone after a
        restart means Redis forgot everything it held, queued messages included."""
        client = redis.Redis(port=self.redis.port, socket_timeout=5)
        try:
            if plant:
                client.set("fault-test-canary", "1")
            return bool(client.exists("fault-test-canary"))
        finally:
            client.close()

    def set_rollout(self, api: ApiProcess, **change: Any) -> None:
        """PUT /rollout through `api`."""
        with api.new_client() as client:
            version = client.get("/rollout").json()["version"]
            response = client.put(
                "/rollout",
                json={**change, "reason": "fault test"},
                headers={"If-Match": f'"{version}"'},
            )
        assert response.status_code == 200, response.text

    def close(self) -> None:
        """Stop everything this rig started."""
        for worker in self.workers:
            worker.stop(timeout=15)
        for api in self.apis:
            api.stop()
        if self.redis.process.poll() is None:
            self.redis.stop()
        self.engine.dispose()

    # submissions

    def submit(
        self, api: ApiProcess, items: Sequence[tuple[str, dict[str, Any]]], *, threads: int = 6
    ) -> list[Submission]:
        """POST every item and wait for the answers."""
        return Submitter(api, items, threads=threads).join()

    def submit_in_background(
        self,
        api: ApiProcess,
        items: Sequence[tuple[str, dict[str, Any]]],
        *,
        threads: int = 4,
        pace: float = 0.0,
    ) -> Submitter:
        """POST every item from background threads, each pausing `pace` seconds before each
        post; `join()` the result."""
        return Submitter(api, items, threads=threads, pace=pace)

    # reading state

    def processing(self) -> list[TaskRecord]:
        """Tasks PROCESSING now."""
        return self.store.find(TaskFilter(status=TaskStatus.PROCESSING), limit=500, offset=0)

    def counts(self) -> dict[str, int]:
        """Tasks by status."""
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT status, COUNT(*) FROM tasks GROUP BY status"))
            return {str(status): int(n) for status, n in rows}

    def status_line(self) -> str:
        """Counts by status, for messages."""
        try:
            return f"tasks by status: {self.counts()}"
        except Exception as exc:  # the message must not hide the original failure
            return f"tasks by status: unreadable ({exc})"

    def running_in(self, pgid: int) -> set[tuple[str, int]]:
        """(task_id, attempt) of PROCESSING tasks whose lease owner is in process group `pgid`."""
        running = set()
        for record in self.processing():
            pid = owner_pid(record)
            if pid is not None and group_of(pid) == pgid:
                running.add((record.task_id, record.attempts))
        return running

    def busiest_worker(self) -> tuple[WorkerProcess, set[tuple[str, int]]] | None:
        """The live worker running the most attempts now, and those attempts; None if no
        worker runs any."""
        best: tuple[WorkerProcess, set[tuple[str, int]]] | None = None
        for worker in self.workers:
            running = self.running_in(worker.process.pid)
            if running and (best is None or len(running) > len(best[1])):
                best = (worker, running)
        return best

    def ledger(self) -> dict[str, list[tuple[int, int]]]:
        """task_id -> [(attempt, pid)] in the order written."""
        ensure_ledger(self.engine)
        found: dict[str, list[tuple[int, int]]] = defaultdict(list)
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT task_id, attempt, pid FROM ledger ORDER BY at"))
            for task_id, attempt, pid in rows:
                found[str(task_id)].append((int(attempt), int(pid)))
        return found

    def wait_all_terminal(self, task_ids: Sequence[str], *, bound: float) -> float | None:
        """Poll until no task is QUEUED or PROCESSING and every id has a row; the monotonic
        time when that was seen, or None if `bound` seconds passed first."""
        deadline = time.monotonic() + bound
        wanted = set(task_ids)
        while True:
            counts = self.counts()
            if not any(counts.get(s, 0) for s in OPEN_STATUSES):
                with self.engine.connect() as conn:
                    present = {str(r[0]) for r in conn.execute(text("SELECT task_id FROM tasks"))}
                if wanted <= present:
                    return time.monotonic()
            if time.monotonic() > deadline:
                return None
            time.sleep(POLL_SECONDS)

    def log_tails(self, lines: int = 30) -> str:
        """The end of every process's log."""
        parts = [
            f"--- {path.name} (last {lines} lines) ---\n{tail(path, lines)}" for path in self.logs
        ]
        return "\n".join(parts)


@contextmanager
def fault_rig(workdir: Path, **env: str) -> Iterator[FaultRig]:
    """A private redis-server and a migrated SQLite file with an operator key; processes are
    started by the test. `env` adds or overrides settings of every process."""
    (workdir / "redis").mkdir()
    server = start_redis(workdir / "redis")
    url = f"sqlite:///{workdir / 'switchyard.db'}"
    engine = database.make_engine(url)
    try:
        database.upgrade(engine)
        ensure_ledger(engine)
        token = KeyStore(engine).create(user_id="faults", role=Role.OPERATOR).token
    except BaseException:
        server.stop()
        engine.dispose()
        raise
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "DATABASE_URL": url,
        "REDIS_URL": server.url,
        "SWITCHYARD_TOOLS": TOOLS,
        "LOG_LEVEL": "INFO",
        "OPERATOR_KEY_FILE": str(workdir / "operator.key"),
        "ROLLOUT_CHANGE_LIMIT": "100",
        "SHUTDOWN_TIMEOUT": "3",
        "CELERY_WORKER_CONCURRENCY": "2",
        **FAST_RECOVERY,
        **env,
    }
    rig = FaultRig(workdir, server, engine, TaskStore(engine), full_env, token)
    try:
        yield rig
    finally:
        rig.close()


# -- the checks --------------------------------------------------------------------------------

Expected = tuple[TaskStatus, str | None]
"""How a task should end: its status and, for FAILED, its error_code."""
COMPLETES: Expected = (TaskStatus.COMPLETED, None)


def explained_attempts(record: TaskRecord, events: Sequence[TaskEvent]) -> dict[int, str]:
    """Attempts the task's history says were killed ("lost": the lease expired with its
    process; "released": its process stopped) or timed out, by attempt number."""
    found: dict[int, str] = {}
    attempt = 0
    for event in events:
        message = event.message or ""
        if event.status is TaskStatus.PROCESSING and message == "started":
            attempt += 1
        elif match := LOST.search(message):
            found[int(match.group(1))] = "lost"
        elif match := TIMED_OUT.search(message):
            found[int(match.group(1)) + record.attempts_before_retry] = "timeout"
        elif message.startswith("released:"):
            found[attempt] = "released"
    if record.status is TaskStatus.FAILED and record.error_code == TIME_LIMIT_EXCEEDED:
        found[record.attempts] = "timeout"
    if record.status is TaskStatus.FAILED and record.error_code == WORKER_LOST:
        match = LOST.search(record.error_message or "")
        found[int(match.group(1)) if match else record.attempts] = "lost"
    return found


@dataclass
class FaultReport:
    """The figures of one fault run, and everything that went wrong in it."""

    fault: str
    tasks: int
    kills_or_restarts: int
    lost: int
    rejected: int
    duplicated_side_effects: int
    re_executions: int
    seconds_until_all_terminal: float | None
    extra: dict[str, Any]
    problems: list[str]
    suspects: list[str]
    re_executed: list[str]

    def line(self) -> str:
        """FAULT-REPORT {json}."""
        figures = {
            "fault": self.fault,
            "tasks": self.tasks,
            "kills_or_restarts": self.kills_or_restarts,
            "lost": self.lost,
            "rejected": self.rejected,
            "duplicated_side_effects": self.duplicated_side_effects,
            "re_executions": self.re_executions,
            "seconds_until_all_terminal": self.seconds_until_all_terminal,
            **self.extra,
        }
        return "FAULT-REPORT " + json.dumps(figures, sort_keys=False)

    def emit(self) -> None:
        """Print the re-executions and the report line; append the line to $FAULT_REPORT."""
        print()
        for entry in self.re_executed:
            print(f"re-executed: {entry}")
        line = self.line()
        print(line)
        target = os.environ.get("FAULT_REPORT")
        if target:
            with open(target, "a", encoding="utf-8") as out:
                out.write(line + "\n")


def check_run(
    rig: FaultRig,
    *,
    fault: str,
    submissions: Sequence[Submission],
    kills_or_restarts: int,
    started: float,
    expected: Callable[[Submission], Expected] = lambda _: COMPLETES,
    interrupted: Sequence[set[tuple[str, int]]] = (),
    must_time_out: Callable[[Submission], set[int]] = lambda _: set(),
    extra: dict[str, Any] | None = None,
    bound: float = TERMINAL_BOUND,
) -> FaultReport:
    """Wait for every accepted task to end, check it all, and build the report.

    `interrupted`: per kill, the attempts that were running in the killed process; at least
    one of each kill's must show as lost (else the kill did not land mid-task).
    `must_time_out`: attempts of a task whose history must say they hit the hard limit.
    """
    sorted_ = Submitted.of(submissions)
    accepted_ids = [s.task_id for s in sorted_.accepted if s.task_id]
    ended_at = rig.wait_all_terminal(accepted_ids, bound=bound)
    problems: list[str] = []
    suspects: list[str] = []
    if ended_at is None:
        problems.append(f"not every task ended within {bound:g}s ({rig.status_line()})")
    for s in sorted_.other:
        problems.append(f"POST /tasks answered {s.status_code}: {s.detail}")
    ledger = rig.ledger()
    lost = 0
    duplicated = 0
    re_executions = 0
    re_executed: list[str] = []
    statuses: Counter[str] = Counter()
    explained_by_task: dict[str, dict[int, str]] = {}
    timeouts = 0
    republished = 0
    for submission in sorted_.accepted:
        task_id = submission.task_id
        assert task_id is not None
        record = rig.store.get(task_id)
        if record is None:
            lost += 1
            problems.append(f"{task_id}: accepted with {submission.status_code} but has no row")
            continue
        statuses[record.status.value] += 1
        events = rig.store.events(task_id)
        explained = explained_attempts(record, events)
        explained_by_task[task_id] = explained
        timeouts += sum(kind == "timeout" for kind in explained.values())
        republished += any((e.message or "").startswith(REPUBLISHED) for e in events)
        task_problems: list[str] = []
        if not record.status.is_terminal:
            lost += 1
            task_problems.append(f"still {record.status} (attempt {record.attempts})")
        want_status, want_code = expected(submission)
        if record.status.is_terminal and (record.status, record.error_code) != (
            want_status,
            want_code,
        ):
            task_problems.append(
                f"ended {record.status} error_code={record.error_code} "
                f"({record.error_message!r}), expected {want_status} error_code={want_code}"
            )
        if record.status is TaskStatus.FAILED and not (record.error_code and record.error_message):
            task_problems.append("FAILED without error_code and error_message")
        completions = sum(e.status is TaskStatus.COMPLETED for e in events)
        if completions != (1 if record.status is TaskStatus.COMPLETED else 0):
            task_problems.append(f"{completions} COMPLETED events with status {record.status}")
        runs = ledger.get(task_id, [])
        attempts = [attempt for attempt, _ in runs]
        twice = sorted(a for a, n in Counter(attempts).items() if n > 1)
        if twice:
            task_problems.append(f"attempt(s) {twice} ran the tool more than once: {runs}")
        duplicated += max(0, len(runs) - 1)
        ordered = sorted(set(attempts))
        for earlier in ordered[:-1]:
            if earlier in explained:
                re_executions += 1
            else:
                task_problems.append(
                    f"attempt {earlier} ran the tool and a later attempt ran it again, but the "
                    f"history shows attempt {earlier} neither lost nor timed out: ledger {runs}"
                )
        if len(ordered) > 1:
            why = ", ".join(f"attempt {a} {explained.get(a, '?')}" for a in ordered[:-1])
            re_executed.append(f"{task_id} ran at attempts {ordered} ({why})")
        if record.status is TaskStatus.COMPLETED and (
            not ordered or ordered[-1] != record.attempts
        ):
            task_problems.append(
                f"COMPLETED by attempt {record.attempts}, but the tool's last run was "
                f"attempt {ordered[-1] if ordered else None}"
            )
        for attempt in sorted(must_time_out(submission)):
            if explained.get(attempt) != "timeout":
                task_problems.append(
                    f"attempt {attempt} outlived the hard limit but its history says "
                    f"{explained.get(attempt, 'nothing about it')}"
                )
        if task_problems:
            problems.extend(f"{task_id}: {p}" for p in task_problems)
            suspects.append(task_id)
    for submission in sorted_.rejected:
        if submission.task_id is None:
            continue
        record = rig.store.get(submission.task_id)
        runs = ledger.get(submission.task_id, [])
        if record is None or (record.status, record.error_code) != (
            TaskStatus.CANCELLED,
            REJECTED,
        ):
            shown = (record.status, record.error_code) if record else None
            problems.append(f"{submission.task_id}: rejected with 503 but the row is {shown}")
            suspects.append(submission.task_id)
        if runs:
            problems.append(f"{submission.task_id}: rejected with 503 but its tool ran: {runs}")
            duplicated += len(runs)
    hit = 0
    for n, running in enumerate(interrupted, start=1):
        landed = {(t, a) for t, a in running if explained_by_task.get(t, {}).get(a) == "lost"}
        hit += len(landed)
        if not landed:
            problems.append(
                f"kill {n} hit no running attempt: none of {sorted(running)} shows as lost"
            )
    report = FaultReport(
        fault=fault,
        tasks=len(sorted_.accepted),
        kills_or_restarts=kills_or_restarts,
        lost=lost,
        rejected=len(sorted_.rejected),
        duplicated_side_effects=duplicated,
        re_executions=re_executions,
        seconds_until_all_terminal=round(ended_at - started, 1) if ended_at else None,
        extra={
            "statuses": dict(sorted(statuses.items())),
            "interrupted_attempts": hit,
            "timed_out_attempts": timeouts,
            "republished_tasks": republished,
            **(extra or {}),
        },
        problems=problems,
        suspects=suspects,
        re_executed=re_executed,
    )
    report.emit()
    return report


def assert_clean(rig: FaultRig, report: FaultReport) -> None:
    """Fail with the problems, the rows and histories of a few suspects, and the log tails."""
    if not report.problems:
        return
    shown = []
    for task_id in report.suspects[:5]:
        record = rig.store.get(task_id)
        events = rig.store.events(task_id)
        history = "\n    ".join(
            f"{e.at.isoformat()} {e.status} {e.progress} {e.message!r}" for e in events
        )
        ledger = rig.ledger().get(task_id, [])
        shown.append(f"{task_id}: {record}\n  ledger {ledger}\n  events:\n    {history}")
    problems = "\n".join(report.problems[:40])
    more = f"\n... and {len(report.problems) - 40} more" if len(report.problems) > 40 else ""
    raise AssertionError(
        f"{report.fault}: {len(report.problems)} problem(s)\n{problems}{more}\n\n"
        + "\n\n".join(shown)
        + f"\n\n{rig.status_line()}\n{rig.log_tails()}"
    )
