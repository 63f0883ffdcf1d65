"""The floors: a raw commit on each store and a raw Redis push/pop, the units of per-task costs."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from sqlalchemy.pool import PoolProxiedConnection

from benchmarks.context import BenchContext, Floors
from benchmarks.runner import Row, Summary, Variant, alternate
from benchmarks.services import Store
from execution.database import make_engine

TABLE = "floor_rows"
DRIVERS: dict[Store, str] = {
    "sqlite": "SQLite single-row INSERT + COMMIT (sqlite3, WAL, synchronous=NORMAL)",
    "postgresql": "PostgreSQL single-row INSERT + COMMIT (psycopg 3, loopback TCP)",
}
PLACEHOLDER: dict[Store, str] = {"sqlite": "?", "postgresql": "%s"}


def run(ctx: BenchContext) -> list[Row]:
    """Measure every floor in alternation and keep their medians for the other comparisons."""
    ops = ctx.sizes.floor_ops
    client = redis.Redis.from_url(ctx.services.redis_url())
    closers: list[Callable[[], None]] = [client.close]
    variants: list[Variant] = []
    try:
        for store in ctx.stores:
            # The raw DB-API connection: the driver and settings Switchyard uses, no SQLAlchemy.
            engine = make_engine(ctx.services.database_url(store, "floor"))
            raw = engine.raw_connection()
            closers += [engine.dispose, raw.close]
            create = "id INTEGER PRIMARY KEY" if store == "sqlite" else "id SERIAL PRIMARY KEY"
            raw.cursor().execute(f"CREATE TABLE {TABLE} ({create}, value TEXT)")
            raw.commit()
            variants.append(Variant(f"commit {store}", _commits(raw, ops, PLACEHOLDER[store])))

        def push_pops() -> float:
            started = time.perf_counter()
            for number in range(ops):
                client.lpush("floor", number)
                client.rpop("floor")
            return (time.perf_counter() - started) / ops * 1e6

        variants.append(Variant("push/pop", push_pops))
        figures = alternate(variants, rounds=ctx.sizes.rounds, console=ctx.console)
    finally:
        for close in reversed(closers):
            close()
    commits = {store: Summary.of(figures[f"commit {store}"]) for store in ctx.stores}
    push_pop = Summary.of(figures["push/pop"])
    ctx.floors = Floors(
        commit_us={store: summary.median for store, summary in commits.items()},
        redis_rtt_us=push_pop.median,
    )
    rows = [
        Row(
            part="floor",
            what=DRIVERS[store],
            unit="µs",
            ours=summary,
            notes=[f"the unit 'commits' of {store} rows below"],
        )
        for store, summary in commits.items()
    ]
    rows.append(
        Row(
            part="floor",
            what="Redis LPUSH + RPOP round trip (redis-py, loopback)",
            unit="µs",
            ours=push_pop,
            notes=["the unit 'push/pops' below"],
        )
    )
    return rows


def _commits(raw: PoolProxiedConnection, ops: int, mark: str) -> Callable[[], float]:
    def measure() -> float:
        cursor = raw.cursor()
        started = time.perf_counter()
        for number in range(ops):
            cursor.execute(f"INSERT INTO {TABLE} (value) VALUES ({mark})", (str(number),))  # noqa: S608
            raw.commit()
        return (time.perf_counter() - started) / ops * 1e6

    return measure
