"""A worker's /metrics: one port per worker, summing its main process and every prefork child.

Children are forked processes with no port of their own; prometheus-client's multiprocess mode
has each write its metrics to files in one directory, which the main process reads and sums at
each scrape. The directory is PROMETHEUS_MULTIPROC_DIR when set (then it is the operator's to
empty between runs), else a fresh temporary one, removed when the worker stops.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from typing import Any
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import start_http_server

from api.settings import Settings
from execution.metrics import MULTIPROCESS_DIR, enable_multiprocess, multiprocess_registry

log = structlog.get_logger(__name__)


class WorkerMetricsServer:
    """Connected to Celery's worker signals: `prepare` before the pool forks, `start` once
    the worker runs, `stop` on shutdown."""

    def __init__(self, settings: Settings) -> None:
        self._port = settings.worker_metrics_port
        self._host = settings.host
        self._created: str | None = None
        self._server: tuple[WSGIServer, threading.Thread] | None = None

    def prepare(self, **_: Any) -> None:
        """`worker_init`: before any metric exists and before the children are forked."""
        if not self._port:
            return
        directory = os.environ.get(MULTIPROCESS_DIR)
        if not directory:
            directory = self._created = tempfile.mkdtemp(prefix="switchyard-metrics-")
        enable_multiprocess(directory)

    def start(self, **_: Any) -> None:
        """`worker_ready`: serve; a port already taken costs the metrics, not the worker."""
        if not self._port:
            return
        try:
            self._server = start_http_server(
                self._port, addr=self._host, registry=multiprocess_registry()
            )
        except OSError as exc:
            log.warning(
                "worker.metrics_unavailable",
                port=self._port,
                error=str(exc),
                hint="give each worker on this host its own WORKER_METRICS_PORT (0 turns it off)",
            )
            return
        log.info("worker.metrics_serving", url=f"http://{self._host}:{self._port}/metrics")

    def stop(self, **_: Any) -> None:
        """`worker_shutdown`."""
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._server = None
        if self._created is not None:
            shutil.rmtree(self._created, ignore_errors=True)
            self._created = None
