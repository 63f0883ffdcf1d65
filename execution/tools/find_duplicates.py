"""`find-duplicates`: exact and near-duplicate texts, as a parallel tool over rows of pairs.

Texts are normalised (NFKC, casefold, punctuation deleted, whitespace collapsed). Exact
duplicates have equal normalised texts (by blake2b digest; so all texts empty once normalised
are exact duplicates), near ones a Jaccard similarity of shingles >= `threshold`. Shingles are
word 3-grams, or for a text of one or two words its character 3-grams (the whole text if
shorter), which never equal a word 3-gram (those hold two spaces).

A batch owns the pairs (i, j > i) of its rows. It verifies only the pairs a size filter and a
prefix filter let through (with rare shingles first, sets with Jaccard >= t share one of their
first |A| - ceil(t|A|) + 1), so thousands of texts take seconds, and returns only the pairs
that join two groups (a spanning forest): no result grows quadratically with the matches.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import sys
import threading
import unicodedata
from bisect import bisect_right
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from execution.tools.data_paths import resolve_data_path
from execution.tools.parallel import (
    MAX_BATCHES,
    BatchContext,
    BatchOutcome,
    OnBatchFailure,
    ParallelJob,
    parallel_tool,
)
from execution.tools.registry import JSONValue, RetryPolicy, ToolContext, ToolFunction

MAX_ITEMS = 20_000
MAX_FILE_BYTES = 1 << 20
SHINGLE = 3
PROGRESS_STEPS = 5
STOP_CHECK_ROWS = 32
EPSILON = 1e-9  # float slack, always on the side of comparing more pairs

Label = int | str


class FindDuplicatesPayload(BaseModel):
    """Either inline `texts` or a directory `path` under the data directory (every regular file
    in it and its subdirectories, symlinks not followed, ordered by relative path)."""

    model_config = ConfigDict(extra="forbid")

    texts: list[Annotated[str, Field(max_length=100_000)]] | None = Field(
        default=None, max_length=MAX_ITEMS
    )
    path: str | None = Field(default=None, max_length=1024)
    threshold: float = Field(default=0.8, ge=0.5, le=1.0)
    pairs_per_batch: int = Field(default=200_000, ge=1_000, le=10_000_000)

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Self:
        if (self.texts is None) == (self.path is None):
            raise ValueError("give exactly one of `texts` (a list of strings) or `path`")
        return self


class DuplicateInputError(ValueError):
    """The items cannot be read: no such directory, too many files, changed since `plan`."""


@functools.cache
def _punctuation() -> dict[int, None]:
    return {c: None for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c))[0] == "P"}


def normalise(text: str) -> str:
    """The text as duplicates are judged: case, punctuation and spacing do not count."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(folded.translate(_punctuation()).split())


def shingles(normalised: str) -> frozenset[str]:
    """Word 3-grams, or character 3-grams for texts of fewer than three words."""
    words = normalised.split()
    if len(words) >= SHINGLE:
        return frozenset(" ".join(words[k : k + SHINGLE]) for k in range(len(words) - SHINGLE + 1))
    if len(normalised) <= SHINGLE:
        return frozenset([normalised] if normalised else [])
    return frozenset(normalised[k : k + SHINGLE] for k in range(len(normalised) - SHINGLE + 1))


def _digest(normalised: str) -> bytes:
    return hashlib.blake2b(normalised.encode(), digest_size=16).digest()


def _files(payload: dict[str, Any], data_dir: Path) -> list[tuple[str, Path]]:
    """The directory's regular files, as (relative POSIX path, path), sorted."""
    root = resolve_data_path(data_dir, str(payload["path"]))
    if not root.is_dir():
        raise DuplicateInputError(f"no directory at {payload['path']!r} in the data directory")
    found: list[tuple[str, Path]] = []
    for folder, _, names in os.walk(root):  # symlinked directories are listed, not entered
        for name in names:
            file = Path(folder, name)
            if file.is_file() and not file.is_symlink():
                found.append((file.relative_to(root).as_posix(), file))
        if len(found) > MAX_ITEMS:
            raise DuplicateInputError(f"{payload['path']!r} holds more than {MAX_ITEMS} files")
    return sorted(found)


def _read(file: Path) -> str:
    with file.open("rb") as stream:
        return stream.read(MAX_FILE_BYTES).decode("utf-8", errors="replace")


def _sources(payload: dict[str, Any], data_dir: Path) -> tuple[list[Label], Callable[[int], str]]:
    """Each item's label (index or relative path), and how to read item i's text."""
    texts = payload.get("texts")
    if texts is not None:
        return list(range(len(texts))), lambda i: str(texts[i])
    files = _files(payload, data_dir)
    return [name for name, _ in files], lambda i: _read(files[i][1])


@dataclass(frozen=True, slots=True)
class _Features:
    """What a batch compares: digests, shingle sets, prefix-filter postings."""

    digests: list[bytes]
    sets: list[frozenset[str]]
    next_same: list[int]  # the next item with the same digest, -1 if none
    prefixes: list[list[str]]  # empty but for the first item of each digest: copies link to it
    postings: dict[str, list[int]]  # shingle -> items with it in their prefix, ascending


def _featurise(texts: Sequence[str], threshold: float) -> _Features:
    normalised = [normalise(text) for text in texts]
    digests = [_digest(text) for text in normalised]
    sets = [shingles(text) for text in normalised]
    next_same, seen = [-1] * len(texts), dict[bytes, int]()
    for i in reversed(range(len(texts))):
        next_same[i] = seen.get(digests[i], -1)
        seen[digests[i]] = i
    first = [seen[digest] == i for i, digest in enumerate(digests)]
    frequency = Counter(s for i, shingle_set in enumerate(sets) if first[i] for s in shingle_set)
    prefixes: list[list[str]] = []
    postings: dict[str, list[int]] = {}
    for i, shingle_set in enumerate(sets):
        ordered = sorted(shingle_set, key=lambda s: (frequency[s], s)) if first[i] else []
        prefix = ordered[: len(ordered) - math.ceil(threshold * len(ordered) - EPSILON) + 1]
        prefixes.append(prefix)
        for shingle in prefix:
            postings.setdefault(shingle, []).append(i)
    return _Features(digests, sets, next_same, prefixes, postings)


_CACHE: OrderedDict[tuple[str, float], _Features] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _features(ctx: BatchContext) -> _Features:
    """The job's features, kept for the last two jobs of this process: a task's payload never
    changes, and its other batches here need not read and shingle every item again."""
    key = (ctx.task_id, float(ctx.payload["threshold"]))
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    labels, text_of = _sources(ctx.payload, ctx.data_dir)
    features = _featurise([text_of(i) for i in range(len(labels))], key[1])
    with _CACHE_LOCK:
        _CACHE[key] = features
        while len(_CACHE) > 2:
            _CACHE.popitem(last=False)
    return features


def _kind(text_of: Callable[[int], str], indices: list[int]) -> str:
    """Exact if every member reads the same once normalised, else near."""
    return "exact" if len({_digest(normalise(text_of(i))) for i in indices}) == 1 else "near"


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while (up := self.parent.get(root, root)) != root:
            root = up
        while x != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> bool:
        """Join a's and b's groups; False if they were one already."""
        ra, rb = self.find(a), self.find(b)
        self.parent.setdefault(a, a)
        self.parent.setdefault(b, b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
        return ra != rb


def _row_ranges(n: int, pairs_per_batch: int) -> list[JSONValue]:
    """Contiguous rows of about `pairs_per_batch` pairs each, never over MAX_BATCHES batches."""
    per = max(pairs_per_batch, -(-(n * (n - 1) // 2) // (MAX_BATCHES - 1)))  # ceil
    ranges: list[JSONValue] = []
    start = pairs = 0
    for row in range(n - 1):
        pairs += n - 1 - row
        if pairs >= per or row == n - 2:
            ranges.append({"rows": [start, row + 1]})
            start, pairs = row + 1, 0
    return ranges


class FindDuplicates(ParallelJob):
    """Group exact and near-duplicate texts, inline or files under the data directory."""

    def plan(self, ctx: ToolContext) -> Sequence[JSONValue]:
        labels, _ = _sources(ctx.payload, ctx.data_dir)
        return _row_ranges(len(labels), int(ctx.payload["pairs_per_batch"]))

    def run_batch(self, ctx: BatchContext) -> JSONValue:
        start, stop = (int(row) for row in ctx.batch["rows"])
        features = _features(ctx)
        n, threshold = len(features.digests), float(ctx.payload["threshold"])
        if not 0 <= start < stop <= n:
            raise DuplicateInputError(f"rows {start}-{stop} are not within the {n} items now")
        total = (stop - start) * (2 * n - start - stop - 1) // 2
        groups, done = _UnionFind(), 0
        pairs: list[list[float]] = []
        every = max(1, (stop - start) // PROGRESS_STEPS)
        for i in range(start, stop):
            moved = (i - start) % every == 0 and i > start
            if moved or ((i - start) % STOP_CHECK_ROWS == 0 and ctx.stop_requested.is_set()):
                # The executor stops a tool in its progress call, with the right error.
                ctx.progress(100 * done / max(total, 1), f"compared {done} of {total} pairs")
            same = features.next_same[i]
            if same >= 0 and groups.union(i, same):
                pairs.append([i, same, 1.0])
            for j, similarity in self._near(features, i, threshold, groups):
                pairs.append([i, j, round(similarity, 4)])
            done += n - 1 - i
        return {"pairs": pairs, "compared": done}

    @staticmethod
    def _near(features: _Features, i: int, t: float, groups: _UnionFind) -> list[tuple[int, float]]:
        """Later items near item i and not yet in its group, ascending (none for a copy)."""
        candidates: set[int] = set()
        for shingle in features.prefixes[i]:
            posting = features.postings[shingle]
            candidates.update(posting[bisect_right(posting, i) :])
        mine, found = features.sets[i], []
        for j in sorted(candidates):
            theirs = features.sets[j]
            small, large = sorted((len(mine), len(theirs)))
            if small < t * large - EPSILON or groups.find(i) == groups.find(j):
                continue
            common = len(mine & theirs)
            similarity = common / (len(mine) + len(theirs) - common)
            if similarity >= t:
                groups.union(i, j)
                found.append((j, similarity))
        return found

    def finalize(self, ctx: ToolContext, outcomes: Sequence[BatchOutcome]) -> JSONValue:
        labels, text_of = _sources(ctx.payload, ctx.data_dir)
        groups, compared = _UnionFind(), 0
        for outcome in outcomes:
            if outcome.ok:
                compared += int(outcome.result["compared"])
                for i, j, _ in outcome.result["pairs"]:
                    groups.union(int(i), int(j))
        members: dict[int, list[int]] = {}
        for item in sorted(groups.parent):
            members.setdefault(groups.find(item), []).append(item)
        if members and max(max(m) for m in members.values()) >= len(labels):
            raise DuplicateInputError(f"only {len(labels)} items now: they changed since `plan`")
        return {
            "items": len(labels),
            "pairs_compared": compared,
            "groups": [
                {"kind": _kind(text_of, m), "members": [labels[i] for i in m], "indices": m}
                for m in sorted(members.values())
            ],
            "duplicates": sum(len(group) - 1 for group in members.values()),
            "failed_batches": [outcome.batch_no for outcome in outcomes if not outcome.ok],
        }


find_duplicates: ToolFunction[JSONValue] = parallel_tool(
    "find-duplicates",
    payload_model=FindDuplicatesPayload,
    description="Group exact and near-duplicate texts (inline, or the files of a directory).",
    retry=RetryPolicy(max_retries=2, backoff=1.0),
    on_batch_failure=OnBatchFailure.FAIL_FAST,
)(FindDuplicates)
