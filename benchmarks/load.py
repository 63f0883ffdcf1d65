"""A loopback load generator: a fixed number of POSTs, a fixed number in flight, each timed."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one burst of requests did."""

    requests: int
    seconds: float
    latencies: list[float]
    """Seconds per request, in completion order."""
    failures: dict[int, int]
    """Responses other than the expected status, by status code."""

    @property
    def throughput(self) -> float:
        """Requests per second over the whole burst."""
        return self.requests / self.seconds

    def percentile(self, fraction: float) -> float:
        """The latency below which `fraction` of the requests finished (nearest rank)."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def post_burst(
    url: str,
    body: dict[str, Any],
    *,
    requests: int,
    concurrency: int,
    expect: int,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """POST `body` to `url` `requests` times, `concurrency` at a time, on kept-alive connections."""
    return asyncio.run(_burst(url, body, requests, concurrency, expect, headers or {}))


async def _burst(
    url: str,
    body: dict[str, Any],
    requests: int,
    concurrency: int,
    expect: int,
    headers: dict[str, str],
) -> LoadResult:
    latencies: list[float] = []
    failures: dict[int, int] = {}
    remaining = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=TIMEOUT_SECONDS, headers=headers) as client:

        async def user() -> None:
            for _ in remaining:  # one shared iterator: the users split the requests between them
                sent = time.perf_counter()
                response = await client.post(url, json=body)
                latencies.append(time.perf_counter() - sent)
                if response.status_code != expect:
                    failures[response.status_code] = failures.get(response.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return LoadResult(requests, seconds, latencies, failures)
