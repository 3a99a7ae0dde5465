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
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws))
    tail = (1 - level) / 2
    return medians[int(tail * draws)], medians[min(draws - 1, int((1 - tail) * draws))]


def describe(ratios: Sequence[float]) -> str:
    """'median 1.021x (90% interval 0.99-1.05x, 15 pairs)'."""
    low, high = median_interval(ratios)
    median = statistics.median(ratios)
    return f"median {median:.3f}x (90% interval {low:.2f}-{high:.2f}x, {len(ratios)} pairs)"
