"""The floors: a raw SQLite commit and a raw Redis push/pop, the units of per-task costs."""

from __future__ import annotations

import time

import redis

from benchmarks.context import BenchContext, Floors
from benchmarks.runner import Row, Summary, Variant, alternate
from execution.database import make_engine

TABLE = "floor_rows"


def run(ctx: BenchContext) -> list[Row]:
    """Measure both floors in alternation and keep their medians for the other comparisons."""
    ops = ctx.sizes.floor_ops
    engine = make_engine(f"sqlite:///{ctx.services.workdir / 'floor.db'}")
    client = redis.Redis.from_url(ctx.services.redis_url())
    # The raw DB-API connection: the driver and PRAGMAs Switchyard uses, without SQLAlchemy.
    raw = engine.raw_connection()
    try:
        raw.cursor().execute(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, value TEXT)")
        raw.commit()

        def commits() -> float:
            cursor = raw.cursor()
            started = time.perf_counter()
            for number in range(ops):
                cursor.execute(f"INSERT INTO {TABLE} (value) VALUES (?)", (str(number),))  # noqa: S608
                raw.commit()
            return (time.perf_counter() - started) / ops * 1e6

        def push_pops() -> float:
            started = time.perf_counter()
            for number in range(ops):
                client.lpush("floor", number)
                client.rpop("floor")
            return (time.perf_counter() - started) / ops * 1e6

        figures = alternate(
            [Variant("commit", commits), Variant("push/pop", push_pops)],
            rounds=ctx.sizes.rounds,
            console=ctx.console,
        )
    finally:
        raw.close()
        client.close()
        engine.dispose()
    commit, push_pop = Summary.of(figures["commit"]), Summary.of(figures["push/pop"])
    ctx.floors = Floors(commit_us=commit.median, redis_rtt_us=push_pop.median)
    return [
        Row(
            part="floor",
            what="SQLite single-row INSERT + COMMIT (sqlite3, WAL, synchronous=NORMAL)",
            unit="µs",
            ours=commit,
            notes=["the unit 'commits' below"],
        ),
        Row(
            part="floor",
            what="Redis LPUSH + RPOP round trip (redis-py, loopback)",
            unit="µs",
            ours=push_pop,
            notes=["the unit 'push/pops' below"],
        ),
    ]
