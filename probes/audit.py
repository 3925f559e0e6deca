"""Delivery audit: sent, received, lost, duplicated, reordered within a key.

Exact, because envelopes carry a per-key sequence number stamped in this
process. One audit per consumer unit (an ungrouped subscription, or a group as
a whole), since each unit should see every envelope of its topic once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bus import Envelope
from probes.histogram import LatencyHistogram


@dataclass(frozen=True)
class DeliveryCounts:
    sent: int
    received: int
    lost: int
    duplicated: int
    reordered: int

    def as_dict(self) -> dict[str, int]:
        return {"sent": self.sent, "received": self.received, "lost": self.lost,
                "duplicated": self.duplicated, "reordered": self.reordered}


class DeliveryAudit:
    """Shared by every consumer unit of a run; records latency for all deliveries."""

    def __init__(self) -> None:
        self.latency = LatencyHistogram()
        self.expected = 0
        self.received = 0
        self.duplicated = 0
        self.reordered = 0
        self._seen: dict[tuple[int, str], set[int]] = {}
        self._last: dict[tuple[int, str], int] = {}
        self._published: dict[str, int] = {}          # topic -> envelopes published
        self._units: dict[int, str] = {}               # unit id -> topic
        self._all_in = asyncio.Event()

    def unit(self, topic: str) -> int:
        """Register a consumer unit on ``topic``; returns its id."""
        uid = len(self._units)
        self._units[uid] = topic
        return uid

    def expect(self, per_topic: dict[str, int]) -> None:
        """``per_topic[topic]`` envelopes will be published; every unit on a topic owes them all."""
        self._published = dict(per_topic)
        self.expected = sum(per_topic.get(topic, 0) for topic in self._units.values())
        self._check()

    def handler(self, uid: int):
        """An async handler for consumer unit ``uid``."""
        record, seen, last = self.latency.record, self._seen, self._last

        async def on_envelope(e: Envelope) -> None:
            record(time.monotonic_ns() - e.ts_ns)
            k = (uid, e.key)
            seqs = seen.get(k)
            if seqs is None:
                seqs = seen[k] = set()
            if e.seq in seqs:
                self.duplicated += 1
                return
            seqs.add(e.seq)
            if e.seq < last.get(k, 0):
                self.reordered += 1
            else:
                last[k] = e.seq
            self.received += 1
            if self.received >= self.expected:
                self._all_in.set()

        return on_envelope

    def _check(self) -> None:
        if self.expected and self.received >= self.expected:
            self._all_in.set()

    async def wait_all(self) -> None:
        await self._all_in.wait()

    def counts(self, published: dict[str, int] | None = None) -> DeliveryCounts:
        """``sent`` is deliveries owed: envelopes actually published times the units on their topic."""
        per_topic = published if published is not None else self._published
        sent = sum(per_topic.get(topic, 0) for topic in self._units.values())
        lost = max(0, sent - self.received)
        return DeliveryCounts(sent, self.received, lost, self.duplicated, self.reordered)
