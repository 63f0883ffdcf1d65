"""Part 4: `POST /tasks` under wrk vs a trivial FastAPI endpoint and a hand-written insert.

Per status store: the real API (thread backend running the noop tasks it is given) and one
baseline server (benchmarks/trivial_app.py: `POST /tasks` answers at once, `POST /tasks/raw`
commits the same rows by hand into its own database on the same store), alternated under wrk.
Afterwards the store must hold a task for every 201 wrk counted, and the thread backend must
finish them all: a request that answered without doing its work cannot flatter the figure.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, func, select

from benchmarks.context import BenchContext, Sizes
from benchmarks.load import CONNECTIONS, THREADS, LoadResult, post_for
from benchmarks.rows import count_status
from benchmarks.runner import Row, Variant, alternate, compared_row, ratio_at_least
from benchmarks.services import STORE_NAMES, Services, Store
from execution.database import make_engine, migrate
from execution.records import TASKS
from execution.status import TERMINAL_STATUSES, TaskStatus

TARGET_RATIO = 0.5
BODY = {"tool_id": "noop", "payload": {}}
EXPECT = 201
TRIVIAL = "trivial FastAPI endpoint"
RAW = "raw insert endpoint (1 hand-written transaction, same rows)"
COMPLETION_TIMEOUT = 300.0
"""How long the thread backend may take, after the last round, to finish every task."""


def round_seconds(sizes: Sizes) -> int:
    """How long wrk runs per round: the preset's request count at a modest 200 req/s."""
    return max(2, round(sizes.api_requests / 200))


@dataclass
class _Side:
    """One server endpoint under load: where, and every wrk run against it (warm-up first)."""

    label: str
    url: str
    runs: list[LoadResult] = field(default_factory=list)

    def answered(self) -> int:
        """201s over every run, warm-up included: each is a task its database must hold."""
        return sum(run.answered for run in self.runs)


def run(ctx: BenchContext) -> list[Row]:
    """Each store in turn, its servers stopped before the next store's start."""
    rows: list[Row] = []
    for store in ctx.stores:
        with ctx.services.scope() as services:
            rows += _on_store(ctx, services, store)
    return rows


def _on_store(ctx: BenchContext, services: Services, store: Store) -> list[Row]:
    workdir = services.workdir
    key_file = workdir / f"api-operator-{store}.key"
    ours_db = services.database_url(store, "api")
    raw_db = services.database_url(store, "raw")
    migrate(ours_db)  # `switchyard db upgrade`: the API migrates only an embedded database
    ours_url = services.http_server(
        [sys.executable, "-m", "api.cli", "serve"],
        name=f"api-switchyard-{store}",
        env={
            "DATABASE_URL": ours_db,
            "USE_CELERY": "false",
            "HOST": "127.0.0.1",
            "LOG_LEVEL": "INFO",
            "SWITCHYARD_DATA_DIR": str(workdir),
            "BACKGROUND_QUEUE_SIZE": "10000000",  # the load must measure POST, not 503s
            "OPERATOR_KEY_FILE": str(key_file),  # where an API that wants keys puts its first
            **ctx.server_env,
        },
    )
    baseline_url = services.http_server(
        [sys.executable, "-m", "benchmarks.trivial_app"],
        name=f"api-baselines-{store}",
        env={"DATABASE_URL": raw_db},
    )
    headers = authorization_headers(ctx.authorization, key_file)
    seconds = round_seconds(ctx.sizes)
    sides = {
        "ours": _Side("ours", f"{ours_url}/tasks"),
        "trivial": _Side("trivial", f"{baseline_url}/tasks"),
        "raw": _Side("raw", f"{baseline_url}/tasks/raw"),
    }

    def load(side: _Side) -> Variant:
        def measure() -> float:
            result = post_for(
                side.url, BODY, seconds=seconds, expect=EXPECT, script_dir=workdir, headers=headers
            )
            side.runs.append(result)
            if result.failures:
                raise RuntimeError(f"{side.label} on {store}: {result.failures} from {side.url}")
            return result.throughput

        return Variant(f"{side.label} {store}", measure)

    rounds = ctx.sizes.rounds
    figures = alternate([load(side) for side in sides.values()], rounds=rounds, console=ctx.console)
    ours_check = _verify(ours_db, sides["ours"], complete=True)
    raw_check = _verify(raw_db, sides["raw"], complete=False)

    throughput = {name: figures[f"{name} {store}"] for name in sides}
    counted = {name: side.runs[-rounds:] for name, side in sides.items()}  # not the warm-up
    label = STORE_NAMES[store]
    setup = f"wrk {THREADS} threads, {CONNECTIONS} connections, {seconds} s; 1 uvicorn worker"
    rows = [
        compared_row(
            part="4",
            what=f"POST /tasks throughput, {label} ({setup})",
            unit="req/s",
            ours=throughput["ours"],
            baseline_label=TRIVIAL,
            baseline=throughput["trivial"],
            target=f"≥ {TARGET_RATIO}x",
            meets=ratio_at_least(TARGET_RATIO),
            notes=[_extra_per_request(throughput["ours"], throughput["trivial"]), ours_check],
        ),
        compared_row(
            part="4",
            what=f"POST /tasks throughput, {label}",
            unit="req/s",
            ours=throughput["ours"],
            baseline_label=RAW,
            baseline=throughput["raw"],
            target="reported",
            notes=[_extra_per_request(throughput["ours"], throughput["raw"]), f"raw: {raw_check}"],
        ),
    ]
    for name, seconds_of in (("p50", _p50), ("p99", _p99)):
        raw = statistics.median(seconds_of(run) * 1e3 for run in counted["raw"])
        rows.append(
            compared_row(
                part="4",
                what=f"POST /tasks latency {name}, {label}",
                unit="ms",
                ours=[seconds_of(run) * 1e3 for run in counted["ours"]],
                baseline_label=TRIVIAL,
                baseline=[seconds_of(run) * 1e3 for run in counted["trivial"]],
                target="reported",
                notes=[f"raw insert endpoint: {raw:.2f} ms"],
            )
        )
    return rows


def _p50(result: LoadResult) -> float:
    return result.p50


def _p99(result: LoadResult) -> float:
    return result.p99


def _extra_per_request(ours: list[float], baseline: list[float]) -> str:
    """The extra time per request, median over the rounds: 1/ours - 1/baseline."""
    extra = statistics.median(1e3 / a - 1e3 / b for a, b in zip(ours, baseline, strict=True))
    return f"{extra:+.2f} ms per request (1/ours - 1/baseline)"


def _verify(database_url: str, side: _Side, *, complete: bool) -> str:
    """Fail unless the database holds a task for every 201 (and, with `complete`, the thread
    backend finishes them all); a short note of what was checked.

    A run stopped by wrk's clock leaves up to one request per connection unanswered but sent,
    which the server may still commit: those are the only rows allowed beyond the 201s.
    """
    answered, runs = side.answered(), len(side.runs)
    engine = make_engine(database_url)
    try:
        if complete:
            _wait_until_completed(engine, side.label)
        stored = _count(engine)
    finally:
        engine.dispose()
    if not answered <= stored <= answered + CONNECTIONS * runs:
        raise RuntimeError(
            f"{side.label}: wrk counted {answered} 201s over {runs} runs, "
            f"the database holds {stored} tasks"
        )
    done = ", all COMPLETED" if complete else ""
    return f"{stored:,} tasks stored for {answered:,} 201s{done}"


def _wait_until_completed(engine: Engine, label: str) -> None:
    """Until every task in the store is COMPLETED; fail if one ends otherwise or time is up."""
    deadline = time.monotonic() + COMPLETION_TIMEOUT
    while True:
        stored = _count(engine)
        ended = {status: count_status(engine, status) for status in TERMINAL_STATUSES}
        if ended[TaskStatus.COMPLETED] == stored:
            return
        if ended[TaskStatus.COMPLETED] < sum(ended.values()) or time.monotonic() > deadline:
            raise RuntimeError(
                f"{label}: of {stored} tasks, "
                + ", ".join(f"{n} {status}" for status, n in ended.items())
                + f" {COMPLETION_TIMEOUT:.0f} s after the rounds at most"
            )
        time.sleep(0.5)


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(TASKS)).scalar_one())


def authorization_headers(given: str | None, key_file: Path) -> dict[str, str]:
    """The header to send: the one given, else the key an API with keys issued itself, if any.

    Both servers get the same headers, so the trivial endpoint parses what the real one does.
    """
    if given:
        return {"Authorization": given}
    if key_file.exists():
        return {"Authorization": f"Bearer {key_file.read_text(encoding='utf-8').strip()}"}
    return {}
