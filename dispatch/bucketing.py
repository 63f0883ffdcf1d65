"""The rollout bucket: one pure, process-independent function. Changing it moves live traffic."""

from __future__ import annotations

import xxhash

BUCKETS = 10_000
"""0.01 % resolution: a percentage p routes buckets [0, p * 100) to Celery."""


def bucket(key: str, *, salt: str) -> int:
    """Map `"{salt}:{key}"` to 0..9999 with xxh3-64 (stable across processes, unlike hash())."""
    if not key:
        raise ValueError("a rollout key is required; an empty key would not be sticky")
    return int(xxhash.xxh3_64_intdigest(f"{salt}:{key}".encode())) % BUCKETS


def threshold(percentage: float) -> int:
    """The number of buckets a percentage covers."""
    if not 0 <= percentage <= 100:
        raise ValueError(f"percentage {percentage} is outside 0-100")
    return round(percentage * BUCKETS / 100)
