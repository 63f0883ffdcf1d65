"""Runs variants in alternation for several rounds and turns their figures into table rows."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rich.console import Console


@dataclass(frozen=True, slots=True)
class Summary:
    """The median of a figure over the rounds, and its spread (min-max)."""

    median: float
    low: float
    high: float
    rounds: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """Summarise one figure's per-round values."""
        if not values:
            raise ValueError("no values to summarise")
        return cls(statistics.median(values), min(values), max(values), len(values))


@dataclass(frozen=True, slots=True)
class Variant:
    """One side of a comparison: a label and how to measure one round of it."""

    label: str
    measure: Callable[[], float]


def alternate(
    variants: Sequence[Variant], *, rounds: int, console: Console, warmup: bool = True
) -> dict[str, list[float]]:
    """Each variant's figure per round, run in turns whose order rotates every round.

    Rotating (AB, BA, AB...) spreads any drift of the machine (heat, a neighbour, a growing
    database) evenly over the variants; the warm-up round fills caches and connection pools
    and is not counted.
    """
    if warmup:
        for variant in variants:
            console.log(f"  warm-up: {variant.label}")
            variant.measure()
    figures: dict[str, list[float]] = {v.label: [] for v in variants}
    for number in range(rounds):
        shift = number % len(variants)
        for variant in [*variants[shift:], *variants[:shift]]:
            value = variant.measure()
            figures[variant.label].append(value)
            console.log(f"  round {number + 1}/{rounds}: {variant.label} = {value:,.6g}")
    return figures


def ratios(ours: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """Per-round ratio ours/baseline: rounds run side by side, so they are compared as pairs."""
    return [a / b for a, b in zip(ours, baseline, strict=True)]


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the report: Switchyard's figure, its baseline's, their ratio and the target."""

    part: str
    """The issue's numbering: "1", "3a", "floor"..."""
    what: str
    unit: str
    ours: Summary | None
    baseline_label: str = ""
    baseline: Summary | None = None
    ratio: Summary | None = None
    target: str = ""
    met: bool | None = None
    """None where there is no target (reported figures and floors)."""
    notes: list[str] = field(default_factory=list)


def compared_row(
    *,
    part: str,
    what: str,
    unit: str,
    ours: Sequence[float],
    baseline_label: str,
    baseline: Sequence[float],
    target: str = "",
    meets: Callable[[Summary, Summary], bool] | None = None,
    notes: Sequence[str] = (),
) -> Row:
    """A row for two figures measured round by round; `meets(ours, ratio)` judges the target."""
    ours_summary, ratio = Summary.of(ours), Summary.of(ratios(ours, baseline))
    return Row(
        part=part,
        what=what,
        unit=unit,
        ours=ours_summary,
        baseline_label=baseline_label,
        baseline=Summary.of(baseline),
        ratio=ratio,
        target=target,
        met=meets(ours_summary, ratio) if meets else None,
        notes=list(notes),
    )


def ratio_at_least(target: float) -> Callable[[Summary, Summary], bool]:
    """A row's `meets`: the median ratio reaches `target`."""
    return lambda _ours, ratio: ratio.median >= target
