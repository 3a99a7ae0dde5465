"""How sure a median ratio is: a bootstrap interval over measured pairs (shared by the benchmarks).

On a shared machine one pair of runs can be 30% off either way; the median of the pair
ratios is the figure to quote, and the interval says how far it could move with other
draws of the same noise.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence


def median_interval(ratios: Sequence[float], level: float = 0.9, draws: int = 4000) -> tuple[float, float]:
    """A percentile-bootstrap interval for the median of ``ratios`` (seeded: reruns agree)."""
    if len(ratios) < 2:
        return ratios[0], ratios[0]
    return _bootstrap([[ratio] for ratio in ratios], level, draws)


def grouped_median_interval(
    groups: Sequence[Sequence[float]], level: float = 0.9, draws: int = 4000
) -> tuple[float, float]:
    """The same for the median of all the groups' ratios pooled, resampling whole groups: where
    the ratios of a group share a lasting bias (one pair of processes), resampling them one by
    one would make the interval too narrow. With one group, its ratios are resampled."""
    if len(groups) < 2:
        return median_interval(groups[0], level, draws)
    return _bootstrap(groups, level, draws)


def _bootstrap(groups: Sequence[Sequence[float]], level: float, draws: int) -> tuple[float, float]:
    rng = random.Random(0)
    medians = sorted(
        statistics.median([ratio for group in rng.choices(groups, k=len(groups)) for ratio in group])
        for _ in range(draws)
    )
    tail = (1 - level) / 2
    return medians[int(tail * draws)], medians[min(draws - 1, int((1 - tail) * draws))]


def describe(ratios: Sequence[float]) -> str:
    """'median 1.021x (90% interval 0.99-1.05x, 15 pairs)'."""
    low, high = median_interval(ratios)
    median = statistics.median(ratios)
    return f"median {median:.3f}x (90% interval {low:.2f}-{high:.2f}x, {len(ratios)} pairs)"


def print_pairs(samples: dict[str, list[dict]], width: int) -> None:
    """Each configuration's fits against the baseline's (the first) of the same round."""
    baseline, *others = samples
    print("\npaired with the baseline run of the same round:")
    for name in others:
        pairs = [s["fit"] / b["fit"] for s, b in zip(samples[name], samples[baseline], strict=True)]
        print(f"{name:<{width}} {describe(pairs)}")
