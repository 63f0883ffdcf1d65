"""Thread backend: a bounded pool inside the API process, fed by a priority-ordered queue."""

from __future__ import annotations

import itertools
import threading
import time
from queue import PriorityQueue
from typing import ClassVar

import structlog

from backends.base import BackendFull, BackendHealth, TaskBackend
from execution.executor import TaskExecutor
from execution.records import TaskRecord

log = structlog.get_logger(__name__)

_STOP = ""  # a task_id that never exists; sorts ahead of every task (see _STOP_KEY)
_STOP_KEY = -100


class ThreadPoolBackend(TaskBackend):
    """`workers` non-daemon threads; highest priority first, then first come first served."""

    name = "thread"
    durable_queue: ClassVar[bool] = False
    runs_in_process: ClassVar[bool] = True

    def __init__(self, *, executor: TaskExecutor, workers: int, capacity: int) -> None:
        self._executor = executor
        self._workers = workers
        self._capacity = capacity
        self._queue: PriorityQueue[tuple[int, int, str]] = PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._running = 0
        self._accepting = False

    def start(self) -> None:
        """Start the workers, then pick up tasks a previous process left QUEUED."""
        with self._lock:
            if self._accepting:
                return
            self._accepting = True
            self._threads = [
                threading.Thread(target=self._work, name=f"switchyard-thread-{i}", daemon=False)
                for i in range(self._workers)
            ]
            # Past the capacity bound on purpose: these were accepted before the restart.
            recovered = self._executor.store.queued(backend=self.name)
            for task_id, priority in recovered:
                self._queue.put((-priority, next(self._order), task_id))
        for thread in self._threads:
            thread.start()
        log.info(
            "backend.started", backend=self.name, workers=self._workers, recovered=len(recovered)
        )

    def check_capacity(self) -> None:
        if self._queue.qsize() >= self._capacity:
            raise BackendFull(
                f"thread backend queue is full ({self._capacity} tasks waiting)", retry_after=2
            )

    def enqueue(self, task: TaskRecord) -> None:
        with self._lock:
            if not self._accepting:
                raise BackendFull("thread backend is shutting down", retry_after=5)
            self.check_capacity()
            self._queue.put((-task.priority, next(self._order), task.task_id))

    def shutdown(self, timeout: float) -> None:
        with self._lock:
            if not self._accepting:
                return
            self._accepting = False
            left = self._queue.qsize()
            for _ in self._threads:
                self._queue.put((_STOP_KEY, -1, _STOP))
        log.info("backend.stopping", backend=self.name, unstarted=left, timeout=timeout)
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, end - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            log.warning("backend.shutdown_timeout", backend=self.name, still_running=self._running)
        else:
            log.info("backend.stopped", backend=self.name, unstarted_left_queued=left)

    def health(self) -> BackendHealth:
        alive = sum(thread.is_alive() for thread in self._threads)
        return BackendHealth(
            ok=self._accepting and alive == self._workers,
            detail={
                "workers": self._workers,
                "alive": alive,
                "running": self._running,
                "waiting": max(0, self._queue.qsize()),
                "capacity": self._capacity,
            },
        )

    def _work(self) -> None:
        while True:
            _, _, task_id = self._queue.get()
            if task_id == _STOP:
                return
            with self._lock:
                self._running += 1
            try:
                self._executor.run(task_id)
            except Exception:  # the executor records tool errors; this is a store outage
                log.exception("backend.run_failed", backend=self.name, task_id=task_id)
            finally:
                with self._lock:
                    self._running -= 1
