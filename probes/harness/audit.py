"""Delivery audit: sent, received, lost, duplicated, reordered within a key.

Exact, because envelopes carry a per-key sequence number stamped in this
process. One audit per consumer unit (an ungrouped subscription, or a group as
a whole), since each unit should see every envelope of its topic once.

What it keeps is per key, not per envelope: the sequence numbers seen, as runs
(``[first, last, first, last, …]``), so a key delivered in order is one run of two
numbers however many envelopes it carried (a set of every number seen had cost
~80 bytes an envelope: 80 MB over a million). A gap (a loss, or an envelope still
to come out of order) is one more run until it fills.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_right
from dataclasses import dataclass

from busmon.bus import Envelope
from busmon.probes.observe.histogram import LatencyHistogram


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
        #: per (unit, key): the sequence numbers seen, as sorted runs [first, last, first, last, …]
        self._seen: dict[tuple[int, str], list[int]] = {}
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
        record, seen = self.latency.record, self._seen

        async def on_envelope(e: Envelope) -> None:
            record(time.monotonic_ns() - e.ts_ns)
            k = (uid, e.key)
            seq = e.seq
            runs = seen.get(k)
            if runs is not None and runs[-1] == seq - 1:
                runs[-1] = seq  # the next one in order: the last run grows
            elif runs is None:
                seen[k] = [seq, seq]
            else:
                found = note_seq(runs, seq)
                if found is DUPLICATE:
                    self.duplicated += 1
                    return
                if found is REORDERED:
                    self.reordered += 1
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


#: what :func:`note_seq` found
NEW, REORDERED, DUPLICATE = "new", "reordered", "duplicate"


def note_seq(runs: list[int], seq: int) -> str:
    """Note ``seq`` in ``runs`` (sorted, disjoint, non-adjacent runs ``[first, last, …]``):
    ``DUPLICATE`` if it was there; else it is added (runs it touches are joined), and it is
    ``REORDERED`` when a higher number was seen before it, else ``NEW``."""
    top = runs[-1]
    p = bisect_right(runs, seq)  # how many bounds are <= seq
    if p & 1 or (p and runs[p - 1] == seq):
        return DUPLICATE  # inside a run, or on its last number
    # in the gap between runs[p - 1] (a run's last, or nothing) and runs[p] (a run's first, or nothing)
    joins_left = p > 0 and runs[p - 1] == seq - 1
    joins_right = p < len(runs) and runs[p] == seq + 1
    if joins_left and joins_right:
        del runs[p - 1:p + 1]  # the gap was this one number: two runs become one
    elif joins_left:
        runs[p - 1] = seq
    elif joins_right:
        runs[p] = seq
    else:
        runs[p:p] = [seq, seq]
    return REORDERED if seq < top else NEW
