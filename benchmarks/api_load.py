"""Part 4: `POST /tasks` under concurrent load vs a trivial FastAPI endpoint, both on uvicorn."""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.context import BenchContext
from benchmarks.load import LoadResult, post_burst
from benchmarks.runner import Row, Variant, alternate, compared_row

TARGET_RATIO = 0.5
BODY = {"tool_id": "noop", "payload": {}}


def run(ctx: BenchContext) -> list[Row]:
    """The real app (SQLite, thread backend running the tasks) and the trivial one, alternated."""
    services, workdir = ctx.services, ctx.services.workdir
    key_file = workdir / "api-operator.key"
    ours_url = services.http_server(
        [sys.executable, "-m", "api.cli", "serve"],
        name="api-switchyard",
        env={
            "DATABASE_URL": f"sqlite:///{workdir / 'api.db'}",
            "USE_CELERY": "false",
            "HOST": "127.0.0.1",
            "LOG_LEVEL": "INFO",
            "SWITCHYARD_DATA_DIR": str(workdir),
            "BACKGROUND_QUEUE_SIZE": "10000000",  # the load must measure POST, not 503s
            "OPERATOR_KEY_FILE": str(key_file),  # where an API that wants keys puts its first
            **ctx.server_env,
        },
    )
    trivial_url = services.http_server(
        [sys.executable, "-m", "benchmarks.trivial_app"], name="api-trivial", env={}
    )
    headers = authorization_headers(ctx.authorization, key_file)
    bursts: dict[str, list[LoadResult]] = {"ours": [], "trivial": []}

    def load(name: str, url: str) -> Variant:
        def measure() -> float:
            result = post_burst(
                f"{url}/tasks",
                BODY,
                requests=ctx.sizes.api_requests,
                concurrency=ctx.sizes.api_concurrency,
                expect=201,
                headers=headers,
            )
            if result.failures:
                raise RuntimeError(f"{name}: unexpected responses {result.failures} from {url}")
            bursts[name].append(result)
            return result.throughput

        return Variant(name, measure)

    rounds = ctx.sizes.rounds
    figures = alternate(
        [load("ours", ours_url), load("trivial", trivial_url)], rounds=rounds, console=ctx.console
    )
    counted = {name: results[-rounds:] for name, results in bursts.items()}  # not the warm-up
    setup = f"{ctx.sizes.api_concurrency} in flight, 1 uvicorn worker"
    rows = [
        compared_row(
            part="4",
            what=f"POST /tasks throughput ({setup})",
            unit="req/s",
            ours=figures["ours"],
            baseline_label="trivial FastAPI endpoint",
            baseline=figures["trivial"],
            target=f"≥ {TARGET_RATIO}x",
            meets=lambda _, ratio: ratio.median >= TARGET_RATIO,
        )
    ]
    for label, fraction in (("p50", 0.5), ("p99", 0.99)):
        rows.append(
            compared_row(
                part="4",
                what=f"POST /tasks latency {label}",
                unit="ms",
                ours=[r.percentile(fraction) * 1e3 for r in counted["ours"]],
                baseline_label="trivial FastAPI endpoint",
                baseline=[r.percentile(fraction) * 1e3 for r in counted["trivial"]],
                target="reported",
            )
        )
    return rows


def authorization_headers(given: str | None, key_file: Path) -> dict[str, str]:
    """The header to send: the one given, else the key an API with keys issued itself, if any.

    Both servers get the same headers, so the trivial endpoint parses what the real one does.
    """
    if given:
        return {"Authorization": given}
    if key_file.exists():
        return {"Authorization": f"Bearer {key_file.read_text(encoding='utf-8').strip()}"}
    return {}
