"""Seed statistics for comparisons of training runs: mean +- sd and paired differences.

A comparison of two variants is only a finding when it exceeds seed noise.
Runs that share a seed share their data order, augmentation draws and (where
the models match) initial weights, so the fair test is *paired*: the
difference ``a_s - b_s`` per seed ``s``, its mean and a Student-t 95 %
interval over seeds (``n - 1`` degrees of freedom). The interval excludes 0
when the difference is beyond seed noise at that level.
"""
from __future__ import annotations

import math
import statistics
from typing import NamedTuple, Sequence

from scipy import stats as _stats


class Summary(NamedTuple):
    """Mean, sample standard deviation (0 for one run) and the number of runs."""
    mean: float
    sd: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.1f} +- {self.sd:.1f}"


class Difference(NamedTuple):
    """Mean paired difference with its two-sided interval (nan bounds for one pair)."""
    mean: float
    low: float
    high: float
    n: int

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (False when it cannot be computed)."""
        return self.n > 1 and (self.low > 0 or self.high < 0)

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:+.1f} (1 seed, no interval)"
        return f"{self.mean:+.1f} [{self.low:+.1f}, {self.high:+.1f}]"


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample sd (``n - 1``) of ``values``."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarize needs at least one value")
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return Summary(statistics.fmean(values), sd, len(values))


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Difference:
    """Mean of ``a[i] - b[i]`` and its Student-t interval at ``level`` (pairs: same seed)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_difference needs two equally long, non-empty lists; got {len(a)} and {len(b)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    s = summarize(d)
    if s.n < 2:
        return Difference(s.mean, math.nan, math.nan, 1)
    half = _stats.t.ppf(0.5 + level / 2, s.n - 1) * s.sd / math.sqrt(s.n)
    return Difference(s.mean, s.mean - half, s.mean + half, s.n)
