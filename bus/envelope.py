"""The unit the bus carries: an ordered, timestamped event for one key."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True, slots=True)
class Envelope:
    """One event.

    ``key`` is the aggregate id that orders: every envelope with the same key is
    handled in order by one worker. ``seq`` is the per-key sequence number and
    ``ts_ns`` a monotonic timestamp; the bus stamps both at publish when they are
    left at 0, so end-to-end latency and the delivery audit are exact within one
    process.
    """

    key: str
    type: str
    payload: bytes
    seq: int = 0
    ts_ns: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"Envelope.key must be a non-empty str, got {self.key!r}")
        if not isinstance(self.type, str) or not self.type:
            raise ValueError(f"Envelope.type must be a non-empty str, got {self.type!r}")
        if not isinstance(self.payload, (bytes, bytearray, memoryview)):
            raise ValueError(
                f"Envelope.payload must be bytes, got {type(self.payload).__name__}"
            )
        if isinstance(self.payload, (bytearray, memoryview)):
            object.__setattr__(self, "payload", bytes(self.payload))
        if not isinstance(self.seq, int) or self.seq < 0:
            raise ValueError(f"Envelope.seq must be an int >= 0, got {self.seq!r}")
        if not isinstance(self.ts_ns, int) or self.ts_ns < 0:
            raise ValueError(f"Envelope.ts_ns must be an int >= 0, got {self.ts_ns!r}")
        headers = self.headers
        if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ValueError("Envelope.headers must map str to str")
        object.__setattr__(self, "headers", MappingProxyType(dict(headers)))

    def stamped(self, seq: int, ts_ns: int) -> Envelope:
        """A copy with the publish-time sequence number and timestamp filled in."""
        return replace(self, seq=self.seq or seq, ts_ns=self.ts_ns or ts_ns)

    def __reduce__(self):  # MappingProxyType does not pickle; envelopes should
        return (
            _rebuild,
            (self.key, self.type, self.payload, self.seq, self.ts_ns, dict(self.headers)),
        )


def _rebuild(key: str, type_: str, payload: bytes, seq: int, ts_ns: int, headers: dict) -> Envelope:
    return Envelope(key=key, type=type_, payload=payload, seq=seq, ts_ns=ts_ns, headers=headers)
