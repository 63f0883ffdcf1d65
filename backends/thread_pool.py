"""Thread backend: a bounded pool inside the API process, fed by a priority-ordered queue."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from queue import PriorityQueue

import structlog

from backends.base import BackendFull, BackendHealth, TaskBackend
from execution.batch_records import BatchRecord
from execution.dispatch_gate import ALL_TOOLS
from execution.executor import TaskExecutor
from execution.records import TaskRecord

log = structlog.get_logger(__name__)

_STOP = ""  # a task_id that never exists; sorts ahead of every task (see _STOP_KEY)
_STOP_KEY = -100
NO_BATCH = -1
"""The batch number of a pool entry that is a whole task, not one batch of a parallel job."""


class ThreadPoolBackend(TaskBackend):
    """`workers` non-daemon threads; highest priority first, then first come first served."""

    name = "thread"

    def __init__(
        self,
        *,
        executor: TaskExecutor,
        workers: int,
        capacity: int,
        sweep_interval: float | None = None,
    ) -> None:
        self._executor = executor
        self._workers = workers
        self._capacity = capacity
        self._sweep_interval = sweep_interval
        self._queue: PriorityQueue[tuple[int, int, str, int]] = PriorityQueue()
        self._waiting: set[str] = set()
        self._waiting_batches: set[tuple[str, int]] = set()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._abandoned: set[int] = set()
        self._spawned = itertools.count()
        self._sweeper: threading.Thread | None = None
        self._stopped = threading.Event()
        self._running = 0
        self._accepting = False

    def start(self) -> None:
        """Start the workers, then pick up tasks a previous process left QUEUED."""
        with self._lock:
            if self._accepting:
                return
            self._accepting = True
            self._threads = [self._new_thread() for _ in range(self._workers)]
        self._executor.leases.subscribe(self._replace)
        self._executor.parallel.hand_over = self.enqueue_batches
        recovered = self._sweep(unchanged_for=0.0)
        for thread in self._threads:
            thread.start()
        if self._sweep_interval:
            self._sweeper = threading.Thread(target=self._sweep_forever, name="switchyard-sweep")
            self._sweeper.start()
        log.info("backend.started", backend=self.name, workers=self._workers, recovered=recovered)

    def _new_thread(self) -> threading.Thread:
        # Daemon: a hung tool must not keep a stopping process alive. Nothing is lost by it:
        # shutdown waits SHUTDOWN_TIMEOUT, then releases what still runs to recovery.
        name = f"switchyard-thread-{next(self._spawned)}"
        return threading.Thread(target=self._work, name=name, daemon=True)

    def _replace(self, ident: int) -> None:
        """An attempt on one of our threads was abandoned (hard time limit, cancel): the thread
        may stay stuck in the tool, so a new one takes its place and the pool keeps its size."""
        with self._lock:
            stuck = next((t for t in self._threads if t.ident == ident), None)
            if stuck is None or not self._accepting:
                return
            self._threads.remove(stuck)
            self._abandoned.add(ident)
            replacement = self._new_thread()
            self._threads.append(replacement)
        replacement.start()
        log.warning("backend.thread_replaced", backend=self.name, abandoned=stuck.name)

    def _sweep(self, *, unchanged_for: float) -> int:
        """Enqueue QUEUED thread tasks this process does not hold: left by a stopped process,
        or handed back by a Celery worker. Past the capacity bound on purpose: they were
        accepted already. A copy another process also holds is harmless: one claim wins.
        Tasks of a paused tool are left where they are: the resume hands them over."""
        gate = self._executor.gate
        held = gate.held_tools() if gate is not None else frozenset()
        if ALL_TOOLS in held:
            return 0
        found = self._executor.store.queued(
            backend=self.name, unchanged_for=unchanged_for, limit=self._capacity, except_tools=held
        )
        batches = self._executor.store.batches.awaiting_hand_over(
            backend=self.name, unchanged_for=unchanged_for, limit=self._capacity, except_tools=held
        )
        taken = 0
        with self._lock:
            for task_id, priority in found:
                if task_id not in self._waiting:
                    self._waiting.add(task_id)
                    self._queue.put((-priority, next(self._order), task_id, NO_BATCH))
                    taken += 1
            for batch, job in batches:
                if (batch.task_id, batch.batch_no) not in self._waiting_batches:
                    self._waiting_batches.add((batch.task_id, batch.batch_no))
                    self._queue.put((-job.priority, next(self._order), job.task_id, batch.batch_no))
                    taken += 1
        return taken

    def _sweep_forever(self) -> None:
        assert self._sweep_interval is not None
        while not self._stopped.wait(self._sweep_interval):
            try:
                if taken := self._sweep(unchanged_for=self._sweep_interval):
                    log.info("backend.swept", backend=self.name, recovered=taken)
            except Exception as exc:  # a database blip: try again next round
                log.warning("backend.sweep_failed", backend=self.name, error=str(exc))

    def check_capacity(self, tasks: int = 1) -> None:
        waiting = self._queue.qsize()
        if waiting + tasks <= self._capacity:
            return
        if tasks == 1:
            raise BackendFull(
                f"thread backend queue is full ({self._capacity} tasks waiting)", retry_after=2
            )
        raise BackendFull(
            f"thread backend queue cannot take {tasks} more tasks ({waiting} of "
            f"{self._capacity} places taken)",
            retry_after=2,
        )

    def enqueue(self, task: TaskRecord) -> None:
        with self._lock:
            if not self._accepting:
                raise BackendFull("thread backend is shutting down", retry_after=5)
            self.check_capacity()
            self._waiting.add(task.task_id)
            self._queue.put((-task.priority, next(self._order), task.task_id, NO_BATCH))

    def shutdown(self, timeout: float) -> None:
        with self._lock:
            if not self._accepting:
                return
            self._accepting = False
            self._stopped.set()
            left = self._queue.qsize()
            for _ in self._threads:
                self._queue.put((_STOP_KEY, -1, _STOP, NO_BATCH))
        log.info("backend.stopping", backend=self.name, unstarted=left, timeout=timeout)
        end = time.monotonic() + timeout
        for thread in [*self._threads, *([self._sweeper] if self._sweeper else [])]:
            thread.join(timeout=max(0.0, end - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            # Their tasks must not stay PROCESSING until the lease runs out: hand them to
            # recovery now (another process, or this one's next start, runs them again).
            released = self._executor.leases.release_all()
            log.warning(
                "backend.shutdown_timeout",
                backend=self.name,
                still_running=self._running,
                released=released,
            )
        else:
            log.info("backend.stopped", backend=self.name, unstarted_left_queued=left)

    def health(self) -> BackendHealth:
        """Saturated when its queue is full: new tasks for it are refused until it drains."""
        with self._lock:
            alive = sum(thread.is_alive() for thread in self._threads)
            running, accepting = self._running, self._accepting
        waiting = max(0, self._queue.qsize())
        if not accepting or alive < self._workers:
            state = "stopped" if not accepting else "threads_missing"
        elif waiting >= self._capacity:
            state = "saturated"
        else:
            state = "ok"
        return BackendHealth(
            ok=state == "ok",
            state=state,
            counts={
                "workers": self._workers,
                "alive": alive,
                "running": running,
                "waiting": waiting,
                "capacity": self._capacity,
            },
        )

    def enqueue_batches(self, job: TaskRecord, batches: Sequence[BatchRecord]) -> None:
        """Past the capacity bound, as recovered tasks are: the job was accepted already.
        They wait at the job's priority; the pool's threads run them, never more at once."""
        with self._lock:
            if not self._accepting:
                raise BackendFull("thread backend is shutting down", retry_after=5)
            for batch in batches:
                self._waiting_batches.add((job.task_id, batch.batch_no))
                self._queue.put((-job.priority, next(self._order), job.task_id, batch.batch_no))

    def _work(self) -> None:
        while True:
            _, _, task_id, batch_no = self._queue.get()
            if task_id == _STOP:
                return
            with self._lock:
                if batch_no == NO_BATCH:
                    self._waiting.discard(task_id)
                else:
                    self._waiting_batches.discard((task_id, batch_no))
                self._running += 1
            try:
                if batch_no == NO_BATCH:
                    self._executor.run(task_id, recorded_for=self.name)
                else:
                    self._executor.run_batch(task_id, batch_no, recorded_for=self.name)
            except BaseException:
                # The executor records tool errors; what reaches here is a store outage or a
                # SystemExit from a tool. The pool keeps its size either way.
                log.exception("backend.run_failed", backend=self.name, task_id=task_id)
            finally:
                with self._lock:
                    self._running -= 1
                    replaced = threading.get_ident() in self._abandoned
                    self._abandoned.discard(threading.get_ident())
            if replaced:
                return  # a replacement took this thread's place
