"""Plain integer counters a bus keeps, which the sampler turns into rates."""

from __future__ import annotations

from dataclasses import asdict, dataclass


#: the errors a bus counts, by the kind a sample and the metrics name them
ERROR_COUNTERS = {"handler": "handler_errors", "decode": "decode_errors", "publish": "publish_errors"}


@dataclass(slots=True)
class BusCounters:
    """Monotonic counters; written only on the bus's own event loop."""

    published: int = 0
    delivered: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    handler_errors: int = 0
    decode_errors: int = 0
    publish_errors: int = 0

    def snapshot(self) -> dict[str, int]:
        """A copy that is safe to hand to another thread."""
        return asdict(self)
