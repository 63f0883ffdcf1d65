"""The rollout bucket: one pure, process-independent function. Changing it moves live traffic."""

from __future__ import annotations

import xxhash

from execution.rollout import BUCKETS, cutoff

__all__ = ["BUCKETS", "bucket", "threshold"]


def bucket(key: str, *, salt: str) -> int:
    """Map `"{salt}:{key}"` to 0..9999 with xxh3-64 (stable across processes, unlike hash())."""
    if not key:
        raise ValueError("a rollout key is required; an empty key would not be sticky")
    digest: int = xxhash.xxh3_64_intdigest(f"{salt}:{key}".encode())
    return digest % BUCKETS


def threshold(percentage: float) -> int:
    """The number of buckets a percentage covers."""
    return cutoff(percentage)[1]
