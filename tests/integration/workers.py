"""Real `switchyard worker` processes for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from celery import Celery

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0


@dataclass
class WorkerProcess:
    """A worker subprocess and where its log goes."""

    process: subprocess.Popen[bytes]
    hostname: str
    log_path: Path

    def log(self) -> str:
        """Everything the worker printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown, as for any process group started here."""
        stop_process_group(self.process, timeout=timeout)


def stop_process_group(process: subprocess.Popen[bytes], *, timeout: float) -> None:
    """SIGTERM a process started with start_new_session (a graceful shutdown), then SIGKILL
    its whole group if it lingers past `timeout` seconds."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def start_worker(
    *,
    env: dict[str, str],
    broker_url: str,
    hostname: str,
    log_path: Path,
    concurrency: int = 1,
    pool: str = "prefork",
) -> WorkerProcess:
    """Start `switchyard worker` and wait until it answers a ping."""
    command = [
        sys.executable,
        "-m",
        "api.cli",
        "worker",
        f"--concurrency={concurrency}",
        f"--pool={pool}",
        f"--hostname={hostname}",
    ]
    # No metrics port unless a test asks: two workers of one test would want the same one.
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "WORKER_METRICS_PORT": "0", **env}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WorkerProcess(process, hostname, log_path)
    probe = Celery(broker=broker_url, set_as_current=False)
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"worker exited with {process.returncode}:\n{worker.log()}")
            if probe.control.ping(destination=[hostname], timeout=0.5):
                return worker
        worker.stop()
        raise RuntimeError(f"worker {hostname} not ready in {READY_TIMEOUT}s:\n{worker.log()}")
    finally:
        probe.close()
