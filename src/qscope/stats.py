"""Intervals for the numbers qscope reports: Wilson for rates, bootstrap for ratios of sums.

Why one module: every experiment reports its numbers with a 95% interval computed the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a rate successes / n (nan, nan for n = 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def bootstrap_ratio_interval(numerators: Sequence[float], denominators: Sequence[float], level: float = 0.95,
                             n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(numerators) / sum(denominators), resampling the
    items (e.g. prompts) in pairs. With one item, or all items alike, the interval is the point."""
    num, den = np.asarray(numerators, float), np.asarray(denominators, float)
    if len(num) == 0 or den.sum() <= 0:
        return float("nan"), float("nan")
    if len(num) < 2:
        value = float(num.sum() / den.sum())
        return value, value
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(n_resamples, len(num)))
    d = den[idx].sum(1)
    ratios = num[idx].sum(1)[d > 0] / d[d > 0]
    alpha = (1 - level) / 2
    return float(np.quantile(ratios, alpha)), float(np.quantile(ratios, 1 - alpha))


def mean_interval(values: Sequence[float], level: float = 0.95, n_resamples: int = 2000,
                  seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a mean."""
    values = np.asarray(values, float)
    return bootstrap_ratio_interval(values, np.ones_like(values), level, n_resamples, seed)


def mcnemar_exact(first: Sequence[bool], second: Sequence[bool]) -> dict:
    """Exact McNemar test of two paired binary outcomes (the same items judged under two
    conditions): the discordant counts and the two-sided binomial p-value."""
    if len(first) != len(second):
        raise ValueError("paired outcomes need the same number of items")
    only_first = sum(bool(a) and not bool(b) for a, b in zip(first, second))
    only_second = sum(bool(b) and not bool(a) for a, b in zip(first, second))
    n = only_first + only_second
    p = 1.0 if n == 0 else float(stats.binomtest(only_first, n, 0.5).pvalue)
    return {"only_first": only_first, "only_second": only_second, "p": p}
