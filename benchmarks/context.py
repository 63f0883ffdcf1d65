"""What every comparison receives: sizes, rounds, the services of the run and the floors."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console

from benchmarks.runner import Summary
from benchmarks.services import STORES, Services, Store


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work one round of each comparison does."""

    rounds: int
    decisions: int
    """Routing decisions timed per round."""
    thread_tasks: int
    """Tasks per round through the thread backend and its hand-written baseline."""
    celery_tasks: int
    """Tasks per round through each Celery setup."""
    api_requests: int
    """POST requests per round against each server."""
    api_concurrency: int
    """Requests in flight at once from the load generator."""
    queued_tasks: int
    """Thread-backend tasks held in the queue for the memory figure."""
    worker_tasks: int
    """Tasks a worker runs for the memory-growth figure."""
    floor_ops: int
    """Commits / push-pop pairs per round of the floors."""
    soak_tasks: int
    """Mixed tasks submitted through the API in the soak, per store."""

    @classmethod
    def preset(cls, name: str) -> Sizes:
        """`quick` for the smoke test, `default` for a few minutes on 2 cores, `full` for 100k."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown size preset {name!r}") from None


PRESETS = {
    "quick": Sizes(
        rounds=2,
        decisions=20_000,
        thread_tasks=60,
        celery_tasks=40,
        api_requests=100,
        api_concurrency=8,
        queued_tasks=1_000,
        worker_tasks=200,
        floor_ops=300,
        soak_tasks=60,
    ),
    "default": Sizes(
        rounds=5,
        decisions=200_000,
        thread_tasks=1_000,
        celery_tasks=500,
        api_requests=1_000,
        api_concurrency=16,
        queued_tasks=100_000,
        worker_tasks=10_000,
        floor_ops=2_000,
        soak_tasks=3_000,
    ),
    "full": Sizes(
        rounds=7,
        decisions=500_000,
        thread_tasks=3_000,
        celery_tasks=2_000,
        api_requests=5_000,
        api_concurrency=16,
        queued_tasks=100_000,
        worker_tasks=100_000,
        floor_ops=5_000,
        soak_tasks=100_000,
    ),
}


@dataclass(frozen=True, slots=True)
class Floors:
    """What the hardware allows, measured on the same run: per-task costs are shown in these."""

    commit_us: dict[Store, float]
    """One single-row INSERT + COMMIT per store, with Switchyard's driver and settings."""
    redis_rtt_us: float
    """One LPUSH + RPOP pair against the run's redis-server."""

    def in_commits(self, micros: float, store: Store = "sqlite") -> str:
        """A per-task cost in units of the store's commit floor (as measured, if it was)."""
        unit = self.commit_us.get(store)
        return f"{micros / unit:.1f} commits" if unit else f"{micros:,.0f} µs"

    def in_redis(self, micros: float) -> str:
        """A per-task cost in units of the Redis push/pop floor."""
        return f"{micros / self.redis_rtt_us:.1f} push/pops"


@dataclass
class BenchContext:
    """Shared by the comparisons of one run."""

    sizes: Sizes
    services: Services
    console: Console
    authorization: str | None = None
    """Sent as the Authorization header on every API request, when the API needs a key."""
    server_env: dict[str, str] = field(default_factory=dict)
    """Extra environment for the Switchyard API server (API keys, say)."""
    floors: Floors | None = None
    """Set by the floors comparison, which runs first."""
    stores: tuple[Store, ...] = STORES
    """The status stores the store-dependent comparisons run on, each in rows of its own."""


def per_task_micros(throughput: Summary) -> float:
    """Microseconds of wall time per task at the median throughput."""
    return 1e6 / throughput.median
