"""A small HDR-style latency histogram: log-linear buckets, constant cost per record.

Written here rather than taken from the ``hdrhistogram`` package because it is
recorded on the bus's hot path (every delivery): this costs one ``bit_length``
and one list increment per value, a fraction of the package's pure-Python
``record_value``. Relative error is below 1/2**SUB_BITS (≈ 0.8%).
"""

from __future__ import annotations

SUB_BITS = 7
_SUB = 1 << SUB_BITS


class LatencyHistogram:
    """Nanosecond values; percentiles in milliseconds."""

    __slots__ = ("_buckets", "count", "max_ns", "min_ns")

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.max_ns = 0
        self.min_ns = 0

    @staticmethod
    def _index(value: int) -> int:
        if value < _SUB:
            return value
        shift = value.bit_length() - SUB_BITS - 1
        return ((shift + 1) << SUB_BITS) + ((value >> shift) - _SUB)

    @staticmethod
    def _lowest(index: int) -> int:
        if index < _SUB:
            return index
        shift = (index >> SUB_BITS) - 1
        return ((index & (_SUB - 1)) + _SUB) << shift

    def record(self, value_ns: int) -> None:
        if value_ns < 0:
            value_ns = 0
        i = self._index(value_ns)
        b = self._buckets
        b[i] = b.get(i, 0) + 1
        if not self.count or value_ns < self.min_ns:
            self.min_ns = value_ns
        self.count += 1
        if value_ns > self.max_ns:
            self.max_ns = value_ns

    def percentile_ns(self, q: float) -> int:
        """The value at or below which ``q`` (0..100) percent of the records fall."""
        if not self.count:
            return 0
        rank = max(1, round(q / 100.0 * self.count))
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                # the bucket's midpoint, never past the recorded max
                lo = self._lowest(index)
                hi = self._lowest(index + 1) - 1
                return min((lo + hi) // 2, self.max_ns)
        return self.max_ns

    def summary_ms(self) -> dict[str, float]:
        return {
            "p50": round(self.percentile_ns(50) / 1e6, 3),
            "p90": round(self.percentile_ns(90) / 1e6, 3),
            "p99": round(self.percentile_ns(99) / 1e6, 3),
            "max": round(self.max_ns / 1e6, 3),
        }
