"""Throughput probe: rates from monotonic counters over the real elapsed time."""

from __future__ import annotations

import time


class RateMeter:
    """Rate of a counter between successive readings (not since the start)."""

    def __init__(self) -> None:
        self._last_t: float | None = None
        self._last_v = 0

    def reset(self, value: int = 0) -> None:
        self._last_t = None
        self._last_v = value

    def rate(self, value: int, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if self._last_t is None or now <= self._last_t:
            self._last_t, self._last_v = now, value
            return 0.0
        r = (value - self._last_v) / (now - self._last_t)
        self._last_t, self._last_v = now, value
        return max(0.0, r)
