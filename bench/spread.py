"""Summaries of noisy same-run ratios: median, spread and a bootstrap interval of the median."""

from __future__ import annotations

import random
import statistics


def pair_ratios(candidate: list[float], baseline: list[float]) -> list[float]:
    return [c / b for c, b in zip(candidate, baseline, strict=True)]


def bootstrap_median(values: list[float], confidence: float = 0.90, resamples: int = 4000,
                     seed: int = 12) -> tuple[float, float]:
    """Percentile bootstrap interval of the median (fixed seed: the same data give the same interval)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return medians[int(tail * resamples)], medians[min(int((1 - tail) * resamples), resamples - 1)]


def summarize(ratios: list[float], digits: int = 3) -> dict:
    """Median, quartiles (IQR), min-max and the 90 % bootstrap interval of the median of ``ratios``."""
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    low, high = bootstrap_median(ratios)
    return {
        "ratios": [round(r, digits) for r in ratios],
        "median": round(statistics.median(ratios), digits),
        "iqr": [round(quartiles[0], digits), round(quartiles[2], digits)],
        "min_max": [round(min(ratios), digits), round(max(ratios), digits)],
        "median_ci90": [round(low, digits), round(high, digits)],
    }
