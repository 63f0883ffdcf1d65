"""Part 1: one routing decision (rollout read + hash + compare) against a bare dict lookup."""

from __future__ import annotations

import time
import uuid

from api.runtime import Runtime
from api.settings import Settings
from benchmarks.context import BenchContext
from benchmarks.runner import Row, Summary, Variant, alternate, compared_row
from dispatch.rollout.policy import bucket, route

TARGET_NS = 1_000.0
TOOL = "noop"


def run(ctx: BenchContext) -> list[Row]:
    """Time `route(rollout.current(), key)` through whatever RolloutSource the runtime wires."""
    settings = Settings(
        _env_file=None,
        database_url=f"sqlite:///{ctx.services.workdir / 'routing.db'}",
        use_celery=True,
        celery_rollout_percentage=50,
        switchyard_data_dir=ctx.services.workdir,
    )
    runtime = Runtime.build(settings)
    runtime.prepare_database()
    runtime.start()  # the rollout source reads its state from where it is kept
    try:
        return _measure(ctx, runtime)
    finally:
        runtime.stop()


def _measure(ctx: BenchContext, runtime: Runtime) -> list[Row]:
    source = runtime.rollout
    keys = [str(uuid.uuid4()) for _ in range(ctx.sizes.decisions)]
    table = {key: "thread" for key in keys}
    salt = source.current().salt

    def decisions() -> float:
        started = time.perf_counter()
        for key in keys:
            route(source.current(), key, TOOL)  # as the dispatcher calls it
        return (time.perf_counter() - started) / len(keys) * 1e9

    def lookups() -> float:
        started = time.perf_counter()
        for key in keys:
            table[key]
        return (time.perf_counter() - started) / len(keys) * 1e9

    def hashes() -> float:
        started = time.perf_counter()
        for key in keys:
            bucket(key, salt=salt)
        return (time.perf_counter() - started) / len(keys) * 1e9

    figures = alternate(
        [Variant("route", decisions), Variant("dict", lookups), Variant("bucket", hashes)],
        rounds=ctx.sizes.rounds,
        console=ctx.console,
    )
    hashing = Summary.of(figures["bucket"]).median
    return [
        compared_row(
            part="1",
            what=f"Routing decision via {type(source).__name__}",
            unit="ns",
            ours=figures["route"],
            baseline_label="dict lookup",
            baseline=figures["dict"],
            target=f"≤ {TARGET_NS:,.0f} ns",
            meets=lambda ours, _: ours.median <= TARGET_NS,
            notes=[f"of which bucket() {hashing:,.0f} ns"],
        )
    ]
