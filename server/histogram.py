"""A fixed-bucket histogram cheap enough for the IO thread's hot path.

One ``observe`` is a ``bisect`` and two additions: no lock, because each
histogram has one writer thread (the IO thread; the Redis broker's are
written by its publisher thread and its reader thread, one each). Readers on other threads take :meth:`Histogram.snapshot`, a copy
that may be one observation behind — what a scrape needs, never torn.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

# Seconds: 100 us (a reply on an idle server) to a minute (a client that barely reads).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


@dataclass(frozen=True)
class HistogramSnapshot:
    """Counts per bucket (``counts[i]``: observations <= ``bounds[i]``; the last: above every bound), and their sum."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)`` for every bound and ``inf``: Prometheus' ``_bucket`` series."""
        total, out = 0, []
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out

    def since(self, earlier: HistogramSnapshot) -> HistogramSnapshot:
        """What was observed after ``earlier`` (a snapshot of the same histogram)."""
        return HistogramSnapshot(self.bounds, tuple(a - b for a, b in zip(self.counts, earlier.counts, strict=True)),
                                 self.sum - earlier.sum)

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the ``q`` quantile (None when empty; ``inf`` past the last bound).

        Bucket resolution, as Prometheus' ``histogram_quantile`` without the interpolation: an upper estimate.
        """
        total = self.count
        if not total:
            return None
        rank = q * total
        for bound, cumulative in self.cumulative():
            if cumulative >= rank:
                return bound
        return float("inf")  # pragma: no cover - the last cumulative is total


class Histogram:
    """Observations counted into fixed buckets (upper bounds inclusive, as Prometheus' ``le``)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError("histogram bounds must be increasing and not empty")
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.sum)
