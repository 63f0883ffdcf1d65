"""Part 5: time from a rollout change (or rollback) until every other API process routes by it."""

from __future__ import annotations

import itertools
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from api.settings import Settings
from benchmarks.api_load import authorization_headers
from benchmarks.context import BenchContext, Sizes
from benchmarks.runner import Row, Summary, Variant, alternate

SERVERS = 3
"""Process 0 takes the changes; the others must find them by polling the database."""
TARGET_MS = 2_000.0
CHECK_SECONDS = 0.01
"""How often each other process's GET /rollout is read while waiting for the new version."""
ROUND_TIMEOUT = 10.0
PERCENTAGES = (50.0, 25.0)
"""Changes alternate between these, so each one moves the routing."""
FLOW_CLIENTS = 2
"""Threads posting tasks to the other processes, one request in flight each."""
FLOW_BODY = {"tool_id": "noop", "payload": {}}
REQUEST_TIMEOUT = 10.0


@dataclass
class FlowTally:
    """Tasks the flowing rounds posted, and over how long: the load the figure was taken under."""

    tasks: int = 0
    seconds: float = 0.0


class PropagationTimeout(RuntimeError):
    """A process did not route by a change within ROUND_TIMEOUT: the run stops, naming it."""


def run(ctx: BenchContext) -> list[Row]:
    """Three `switchyard serve` on one SQLite database; changes through one, others watched."""
    services, workdir = ctx.services, ctx.services.workdir
    key_file = workdir / "rollout-operator.key"
    refresh = ctx.server_env.get(
        "ROLLOUT_REFRESH_SECONDS", str(Settings.model_fields["rollout_refresh_seconds"].default)
    )
    env = {
        "DATABASE_URL": f"sqlite:///{workdir / 'rollout.db'}",
        "USE_CELERY": "true",  # else every process reports a 0 % effective share
        "CELERY_ROLLOUT_PERCENTAGE": str(PERCENTAGES[0]),
        "REDIS_URL": services.redis_url(),  # /health wants the broker; no worker is needed
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "INFO",
        "SWITCHYARD_DATA_DIR": str(workdir),
        "OPERATOR_KEY_FILE": str(key_file),
        "ROLLOUT_CHANGE_LIMIT": "1000",  # the default 10 a minute would refuse the later rounds
        "ROLLOUT_REFRESH_SECONDS": refresh,
        **ctx.server_env,
    }
    # One after another: the first migrates the database and writes the operator key.
    urls = [
        services.http_server(
            [sys.executable, "-m", "api.cli", "serve"], name=f"rollout-api-{number}", env=env
        )
        for number in range(SERVERS)
    ]
    headers = authorization_headers(ctx.authorization, key_file)
    with httpx.Client(headers=headers, timeout=REQUEST_TIMEOUT) as client:
        writer, others = urls[0], urls[1:]
        interval = float(refresh)
        percentages = itertools.cycle(PERCENTAGES)
        tally = FlowTally()

        def change() -> int:
            version = _read_version(client, writer)
            response = client.put(
                f"{writer}/rollout",
                json={"percentage": next(percentages), "reason": "benchmark: propagation"},
                headers={"If-Match": f'"{version}"'},
            )
            return _version_of(response)

        def rollback() -> int:
            response = client.post(
                f"{writer}/rollout/rollback", json={"reason": "benchmark: propagation"}
            )
            return _version_of(response)

        def propagation(act: Callable[[], int], *, flowing: bool) -> Callable[[], float]:
            def measure() -> float:
                # Land at a random point of the others' poll cycle, not just after the poll
                # that found the previous change: that would time the worst case every round.
                time.sleep(random.uniform(0, interval))
                with _task_flow(others, headers, tally) if flowing else _idle():
                    version = act()
                    written = time.perf_counter()
                    return _wait_adopted(client, others, version, written) * 1e3

            return measure

        variants = [
            Variant("change", propagation(change, flowing=False)),
            Variant("rollback", propagation(rollback, flowing=False)),
            Variant("change, tasks flowing", propagation(change, flowing=True)),
            Variant("rollback, tasks flowing", propagation(rollback, flowing=True)),
        ]
        rounds = _rounds(ctx.sizes)
        figures = alternate(variants, rounds=rounds, console=ctx.console)
    notes = [
        f"poll interval {interval:g} s; {rounds} rounds",
        f"{SERVERS - 1} other processes, each read every {CHECK_SECONDS * 1e3:g} ms",
    ]
    flowing = [
        *notes,
        f"meanwhile {FLOW_CLIENTS} clients POST /tasks to the other processes, "
        f"{tally.tasks / tally.seconds:,.0f} tasks/s",
    ]
    return [
        _row("Rollout change", figures["change"], notes),
        _row("Rollback", figures["rollback"], notes),
        _row("Rollout change (tasks flowing)", figures["change, tasks flowing"], flowing),
        _row("Rollback (tasks flowing)", figures["rollback, tasks flowing"], flowing),
    ]


def _rounds(sizes: Sizes) -> int:
    """Twice the usual: each figure is one draw over the poll phase, so it varies more.

    The quick preset keeps its 2 rounds: it only checks that the comparison runs.
    """
    return sizes.rounds if sizes == Sizes.preset("quick") else 2 * sizes.rounds


def _row(what: str, values: list[float], notes: list[str]) -> Row:
    ours = Summary.of(values)
    return Row(
        part="5",
        what=f"{what} until every other API process routes by it",
        unit="ms",
        ours=ours,
        target=f"≤ {TARGET_MS:,.0f} ms, every round",
        met=ours.high <= TARGET_MS,
        notes=notes,
    )


def _wait_adopted(client: httpx.Client, urls: list[str], version: int, written: float) -> float:
    """Seconds from `written` until every process in `urls` reports `version` (or later)."""
    pending = set(urls)
    while True:
        for url in sorted(pending):
            if _read_version(client, url) >= version:
                pending.discard(url)
        elapsed = time.perf_counter() - written
        if not pending:
            return elapsed
        if elapsed > ROUND_TIMEOUT:
            raise PropagationTimeout(
                f"{', '.join(sorted(pending))} did not route by rollout version {version} "
                f"within {ROUND_TIMEOUT:g} s; see the rollout-api-*.log files"
            )
        time.sleep(CHECK_SECONDS)


def _read_version(client: httpx.Client, url: str) -> int:
    return _version_of(client.get(f"{url}/rollout"))


def _version_of(response: httpx.Response) -> int:
    if response.status_code != 200:
        raise RuntimeError(
            f"{response.request.method} {response.request.url} answered "
            f"{response.status_code}: {response.text[:300]}"
        )
    return int(response.json()["version"])


@contextmanager
def _idle() -> Iterator[None]:
    yield


@contextmanager
def _task_flow(urls: list[str], headers: dict[str, str], tally: FlowTally) -> Iterator[None]:
    """Tasks POSTed to `urls` while the block runs, which starts once each client had an answer."""
    stop = threading.Event()
    answered = [threading.Event() for _ in range(FLOW_CLIENTS)]
    failures: list[str] = []
    posted = [0] * FLOW_CLIENTS

    def post(number: int, url: str, answer: threading.Event) -> None:
        try:
            with httpx.Client(headers=headers, timeout=REQUEST_TIMEOUT) as client:
                while not stop.is_set():
                    response = client.post(f"{url}/tasks", json=FLOW_BODY)
                    posted[number] += 1
                    if response.status_code != 201:
                        failures.append(f"{url}: {response.status_code} {response.text[:200]}")
                    answer.set()
        except httpx.HTTPError as exc:
            failures.append(f"{url}: {type(exc).__name__}: {exc}")
        finally:
            answer.set()

    threads = [
        threading.Thread(target=post, args=(n, urls[n % len(urls)], answered[n]), daemon=True)
        for n in range(FLOW_CLIENTS)
    ]
    for thread in threads:
        thread.start()
    try:
        for answer in answered:
            answer.wait(timeout=REQUEST_TIMEOUT)
        already, started = sum(posted), time.perf_counter()
        yield
        tally.tasks += sum(posted) - already
        tally.seconds += time.perf_counter() - started
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=REQUEST_TIMEOUT)
    if failures:  # a refused task means the figure was taken under a different load
        raise RuntimeError(f"tasks failed while measuring propagation: {failures[:3]}")
