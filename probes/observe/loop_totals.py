"""The process's loop lag and stalls since busmon started serving metrics, never reset.

A :class:`~busmon.probes.observe.loopwatch.LoopWatch` keeps its lag per phase and forgets it
at every new run or baseline: right for a run's report, wrong for Prometheus, whose
histograms and counters must only ever grow. While metrics are served (``--metrics``), every
LoopWatch beat and stall of the process is also added here: one bucket search and three
additions per beat (50 a second), nothing at all when metrics are off.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass

#: the lag histogram's upper bounds, in seconds (a beat is due every 20 ms; a stall is ≥ 100 ms
#: by default): fine where a healthy loop lies, coarse out to a 10 s block
LAG_BOUNDS_S: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                   1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class LoopTotalsReading:
    """A consistent copy: counts per bucket (not cumulative; the last is above every bound)."""

    buckets: tuple[int, ...]
    sum_s: float
    stalls: int


class LoopTotals:
    """Lag observations and stalls of every watched loop of the process, cumulative."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets = [0] * (len(LAG_BOUNDS_S) + 1)
        self._sum_s = 0.0
        self._stalls = 0

    def beat(self, lag_s: float) -> None:
        """One heartbeat's lateness (from the loop's thread)."""
        lag_s = lag_s if lag_s > 0 else 0.0
        i = bisect.bisect_left(LAG_BOUNDS_S, lag_s)
        with self._lock:
            self._buckets[i] += 1
            self._sum_s += lag_s

    def stall(self) -> None:
        with self._lock:
            self._stalls += 1

    def read(self) -> LoopTotalsReading:
        with self._lock:
            return LoopTotalsReading(tuple(self._buckets), self._sum_s, self._stalls)


#: the process's totals while metrics are served, else None (a LoopWatch then adds nothing)
_current: LoopTotals | None = None


def enable() -> LoopTotals:
    """Start keeping totals (idempotent): every LoopWatch adds to them from now on."""
    global _current
    if _current is None:
        _current = LoopTotals()
    return _current


def current() -> LoopTotals | None:
    return _current
