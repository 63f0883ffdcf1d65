"""find-duplicates: each parallel step on its own, and the direct (inline) call."""

from __future__ import annotations

import itertools
import json
import random
import re
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from execution.tools.data_paths import DataPathError
from execution.tools.find_duplicates import (
    DuplicateInputError,
    FindDuplicates,
    find_duplicates,
    normalise,
    shingles,
)
from execution.tools.parallel import MAX_BATCHES, BatchContext, BatchOutcome, OnBatchFailure
from execution.tools.registry import InvalidPayload, ProgressReporter, ToolContext, ToolRegistry
from tests.helpers import RecordedProgress

JOB = FindDuplicates()
SPEC = find_duplicates.spec
BASE = (
    "the committee met on tuesday to review the budget and agreed to postpone "
    "the vote on new parking rules until the spring session"
)


def _context(raw: dict[str, Any], data_dir: Path, progress: RecordedProgress | None = None) -> Any:
    """A fresh task (its own id, so no cached features) with the payload validated."""
    return ToolContext(
        task_id=str(uuid.uuid4()),
        attempt=1,
        payload=SPEC.validate_payload(raw),
        progress=progress or RecordedProgress(),
        data_dir=data_dir,
    )


def _batch(
    ctx: ToolContext,
    batch_no: int,
    batch: Any,
    progress: ProgressReporter,
    stop: threading.Event | None = None,
) -> Any:
    return BatchContext(
        task_id=ctx.task_id,
        batch_no=batch_no,
        attempt=1,
        payload=ctx.payload,
        batch=batch,
        progress=progress,
        data_dir=ctx.data_dir,
        stop_requested=stop or threading.Event(),
    )


def _steps(raw: dict[str, Any], data_dir: Path) -> tuple[list[Any], list[BatchOutcome], Any]:
    """Plan, every batch, finalize: what the executor does, minus the database."""
    ctx = _context(raw, data_dir)
    plan = list(JOB.plan(ctx))
    outcomes = [
        BatchOutcome(n, batch, JOB.run_batch(_batch(ctx, n, batch, RecordedProgress())))
        for n, batch in enumerate(plan)
    ]
    return plan, outcomes, JOB.finalize(ctx, outcomes)


def _groups(result: Any) -> list[tuple[str, list[Any]]]:
    return [(group["kind"], group["indices"]) for group in result["groups"]]


def _call(raw: dict[str, Any], data_dir: Path) -> Any:
    return find_duplicates(_context(raw, data_dir))


def _changed(text: str, position: int, word: str = "zebra") -> str:
    words = text.split()
    words[position] = word
    return " ".join(words)


def _corpus(rng: random.Random, size: int, words: int = 25) -> list[str]:
    """Unrelated texts of made-up words: any duplicate among them is planted."""
    vocabulary = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=7)) for _ in range(4000)]
    return [" ".join(rng.choices(vocabulary, k=words)) for _ in range(size)]


def _brute_force(texts: Sequence[str], threshold: float) -> list[list[int]]:
    """Groups by comparing every pair the slow way: what the filters must not change."""
    norm = [normalise(text) for text in texts]
    sets = [shingles(text) for text in norm]
    parent = list(range(len(texts)))

    def root(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for i, j in itertools.combinations(range(len(texts)), 2):
        union = len(sets[i] | sets[j])
        if norm[i] == norm[j] or (union and len(sets[i] & sets[j]) / union >= threshold):
            parent[max(root(i), root(j))] = min(root(i), root(j))
    groups: dict[int, list[int]] = {}
    for i in range(len(texts)):
        groups.setdefault(root(i), []).append(i)
    return sorted(group for group in groups.values() if len(group) > 1)


def test_it_is_a_registered_parallel_tool(registry: ToolRegistry) -> None:
    spec = registry["find-duplicates"]

    assert spec.parallel is not None
    assert spec.on_batch_failure is OnBatchFailure.FAIL_FAST
    assert (spec.retry.max_retries, spec.retry.backoff) == (2, 1.0)


def test_exact_duplicates_ignore_case_punctuation_width_and_spacing(data_dir: Path) -> None:
    texts = [
        "Hello,   World!",
        "something else entirely",
        "hello world",
        "\uff28\uff25\uff2c\uff2c\uff2f\tworld?!",
    ]

    result = _call({"texts": texts}, data_dir)

    assert result == {
        "items": 4,
        "pairs_compared": 6,
        "groups": [{"kind": "exact", "members": [0, 2, 3], "indices": [0, 2, 3]}],
        "duplicates": 2,
        "failed_batches": [],
    }


def test_near_duplicates_above_the_threshold_are_found_and_below_it_not(data_dir: Path) -> None:
    # 23 words, 21 shingles: a changed last word shares 20 of 22, a middle one 18 of 24.
    texts = [BASE, _changed(BASE, -1), _changed(BASE, 10)]

    _, outcomes, result = _steps({"texts": texts, "threshold": 0.8}, data_dir)

    assert _groups(result) == [("near", [0, 1])]
    assert [outcome.result["pairs"] for outcome in outcomes] == [[[0, 1, round(20 / 22, 4)]]]
    assert _groups(_call({"texts": texts, "threshold": 0.7}, data_dir)) == [("near", [0, 1, 2])]


def test_short_texts_compare_by_character_shingles(data_dir: Path) -> None:
    texts = ["hello world", "Hello worlds", "goodbye", "hello", "x", "X."]

    result = _call({"texts": texts}, data_dir)

    assert _groups(result) == [("near", [0, 1]), ("exact", [4, 5])]


def test_texts_empty_after_normalisation_are_exact_duplicates(data_dir: Path) -> None:
    result = _call({"texts": ["", "a b c", "?!", "   ", "A, B. C"]}, data_dir)

    assert _groups(result) == [("exact", [0, 2, 3]), ("exact", [1, 4])]
    assert result["duplicates"] == 3


def test_groups_are_ordered_by_first_index_and_results_are_identical(data_dir: Path) -> None:
    other, third = _changed(BASE, 0, "a"), _changed(BASE, 5, "b")
    other, third = other.replace("budget", "garden"), third.replace("vote", "race")
    texts = [BASE, other, BASE.upper(), third, other + ".", _changed(BASE, -1), third]
    raw = {"texts": texts}

    results = [_steps(raw, data_dir)[2] for _ in range(2)] + [_call(raw, data_dir)]

    assert _groups(results[0]) == [("near", [0, 2, 5]), ("exact", [1, 4]), ("exact", [3, 6])]
    assert len({json.dumps(result) for result in results}) == 1


@pytest.mark.parametrize("texts", [[], ["only one"]])
def test_fewer_than_two_items_plan_no_batch(texts: list[str], data_dir: Path) -> None:
    plan, _, result = _steps({"texts": texts}, data_dir)

    assert plan == []
    assert result == {
        "items": len(texts),
        "pairs_compared": 0,
        "groups": [],
        "duplicates": 0,
        "failed_batches": [],
    }
    assert _call({"texts": texts}, data_dir) == result


@pytest.mark.parametrize(
    ("n", "pairs_per_batch"),
    [(2, 1000), (3, 1000), (50, 1000), (200, 1000), (200, 4321), (300, 10_000_000)],
)
def test_batches_cover_every_pair_exactly_once(
    n: int, pairs_per_batch: int, data_dir: Path
) -> None:
    texts = _corpus(random.Random(n), n, words=6)
    raw = {"texts": texts, "pairs_per_batch": pairs_per_batch}

    plan, outcomes, result = _steps(raw, data_dir)

    rows = [batch["rows"] for batch in plan]
    assert rows[0][0] == 0
    assert rows[-1][1] == n - 1  # the last row has no pair of its own
    assert all(a[1] == b[0] for a, b in itertools.pairwise(rows))
    assert all(start < stop for start, stop in rows)
    assert sum(outcome.result["compared"] for outcome in outcomes) == n * (n - 1) // 2
    assert result["pairs_compared"] == n * (n - 1) // 2
    sizes = [outcome.result["compared"] for outcome in outcomes]
    assert all(size >= pairs_per_batch for size in sizes[:-1])
    assert all(size < pairs_per_batch + n for size in sizes)


def test_a_huge_job_is_planned_within_the_batch_limit(data_dir: Path) -> None:
    plan = JOB.plan(_context({"texts": [""] * 20_000, "pairs_per_batch": 1000}, data_dir))

    assert 1 < len(plan) <= MAX_BATCHES
    assert (
        sum(
            (stop - start) * (2 * 20_000 - start - stop - 1) // 2
            for start, stop in (batch["rows"] for batch in plan)
        )
        == 20_000 * 19_999 // 2
    )


def test_the_groups_do_not_depend_on_the_batches_nor_the_filters(data_dir: Path) -> None:
    rng = random.Random(7)
    texts = _corpus(rng, 150, words=8)
    for k in range(0, 60, 3):  # copies, and copies with one, two or three words changed
        texts[k + 1] = _changed(texts[k], rng.randrange(8), rng.choice(["x", "y"]))
        texts[k + 2] = texts[k].upper() if k % 2 else _changed(texts[k], -1, "q")

    results = [
        _steps({"texts": texts, "threshold": 0.6, "pairs_per_batch": per}, data_dir)[2]
        for per in (1000, 2500, 10_000_000)
    ]

    assert results[0] == results[1] == results[2]
    assert [group["indices"] for group in results[0]["groups"]] == _brute_force(texts, 0.6)


def test_a_directory_is_read_with_its_files_relative_paths_as_labels(
    data_dir: Path, tmp_path: Path
) -> None:
    (data_dir / "docs" / "sub").mkdir(parents=True)
    (data_dir / "docs" / "b.txt").write_text("Hello, world!", encoding="utf-8")
    (data_dir / "docs" / "a.txt").write_text("unrelated words", encoding="utf-8")
    (data_dir / "docs" / "sub" / "c.txt").write_text("hello WORLD", encoding="utf-8")
    (data_dir / "docs" / "latin1.txt").write_bytes("Café, au lait".encode("latin-1"))
    (data_dir / "docs" / "d.txt").write_text("CAF\ufffd au lait", encoding="utf-8")
    (tmp_path / "secret.txt").write_text("hello world", encoding="utf-8")
    (data_dir / "docs" / "link.txt").symlink_to(tmp_path / "secret.txt")

    result = _call({"path": "docs"}, data_dir)

    assert result["items"] == 5  # not the link out
    assert result["groups"] == [
        {"kind": "exact", "members": ["b.txt", "sub/c.txt"], "indices": [1, 4]},
        {"kind": "exact", "members": ["d.txt", "latin1.txt"], "indices": [2, 3]},
    ]
    assert _steps({"path": "docs"}, data_dir)[2] == result


def test_a_directory_outside_the_data_directory_is_refused(data_dir: Path) -> None:
    (data_dir.parent / "elsewhere").mkdir()
    (data_dir / "link").symlink_to(data_dir.parent / "elsewhere")

    for path in ("..", "../elsewhere", str(data_dir.parent), "link"):
        message = f"path {path!r} is outside the data directory"
        with pytest.raises(DataPathError, match=re.escape(message)):
            _call({"path": path}, data_dir)


def test_a_missing_directory_is_a_clear_error(data_dir: Path) -> None:
    (data_dir / "file.txt").write_text("not a directory")

    for path in ("nowhere", "file.txt"):
        with pytest.raises(DuplicateInputError, match=f"no directory at {path!r}"):
            JOB.plan(_context({"path": path}, data_dir))


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        ({}, "exactly one of `texts`"),
        ({"texts": ["a"], "path": "docs"}, "exactly one of `texts`"),
        ({"texts": ["a"], "threshold": 0.4}, "threshold"),
        ({"texts": ["a"], "threshold": 1.01}, "threshold"),
        ({"texts": ["a"], "pairs_per_batch": 999}, "pairs_per_batch"),
        ({"texts": ["a"], "shingle": 2}, "shingle"),
        ({"texts": ["a" * 100_001]}, "texts.0"),
    ],
)
def test_the_payload_model_refuses_what_does_not_fit(raw: dict[str, Any], complaint: str) -> None:
    with pytest.raises(InvalidPayload, match=complaint):
        SPEC.validate_payload(raw)


def test_failed_batches_are_named_and_the_rest_still_grouped(data_dir: Path) -> None:
    texts = [BASE] * 3 + _corpus(random.Random(1), 60, words=5) + [BASE.title()]
    plan, outcomes, _ = _steps({"texts": texts, "pairs_per_batch": 1000}, data_dir)
    assert len(plan) == 2
    failed = BatchOutcome(1, plan[1], None, "RuntimeError", "boom")

    result = JOB.finalize(_context({"texts": texts}, data_dir), [outcomes[0], failed])

    assert result["failed_batches"] == [1]
    assert result["pairs_compared"] == outcomes[0].result["compared"]
    assert _groups(result) == [("exact", [0, 1, 2, 63])]


def test_a_batch_reports_a_handful_of_rising_progress(data_dir: Path) -> None:
    ctx = _context({"texts": _corpus(random.Random(3), 100)}, data_dir)
    progress = RecordedProgress()

    JOB.run_batch(_batch(ctx, 0, {"rows": [0, 99]}, progress))

    percents = [percent for percent, _ in progress.calls]
    assert 3 <= len(percents) <= 6
    assert percents == sorted(percents)
    assert 0 < percents[0] < percents[-1] < 100
    assert progress.calls[0][1] == "compared 1710 of 4950 pairs"


def test_a_stop_request_is_passed_on_through_progress(data_dir: Path) -> None:
    """The executor stops a tool in its progress call; where that call returns, the batch
    goes on to a whole result, never a partial one."""
    ctx = _context({"texts": _corpus(random.Random(4), 100)}, data_dir)
    stop = threading.Event()
    stop.set()

    def stopping(percent: float, message: str | None = None) -> None:
        raise InterruptedError(message)

    with pytest.raises(InterruptedError, match="compared 0 of 4950 pairs"):
        JOB.run_batch(_batch(ctx, 0, {"rows": [0, 99]}, stopping, stop))
    progress = RecordedProgress()
    assert JOB.run_batch(_batch(ctx, 0, {"rows": [0, 99]}, progress, stop))["compared"] == 4950
    assert progress.calls[0] == (0, "compared 0 of 4950 pairs")


def test_planted_duplicates_are_found_among_two_thousand_texts(data_dir: Path) -> None:
    rng = random.Random(2024)
    texts = _corpus(rng, 2000, words=30)
    planted: list[tuple[str, list[int]]] = []
    for k in range(0, 400, 10):
        if k % 20:  # an exact copy, shouted, further down; and a second one
            texts[k + 1000] = texts[k].upper() + "!"
            texts[k + 1500] = "  " + texts[k].replace(" ", ",  ")
            planted.append(("exact", [k, k + 1000, k + 1500]))
        else:  # one word changed near the end: 26 of 30 shingles shared
            texts[k + 1000] = _changed(texts[k], -2)
            planted.append(("near", [k, k + 1000]))

    result = _call({"texts": texts, "pairs_per_batch": 100_000}, data_dir)

    assert _groups(result) == planted
    assert result["pairs_compared"] == 2000 * 1999 // 2
