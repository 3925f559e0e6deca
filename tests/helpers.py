"""Test helpers: collect deliveries and wait for them on events, never on sleeps."""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict

from bus import Envelope


class Collector:
    """An async handler that records what it receives and lets tests await a count."""

    def __init__(self, name: str = "collector") -> None:
        self.name = name
        self.received: list[Envelope] = []
        self._waiters: list[tuple[int, asyncio.Event]] = []

    async def __call__(self, envelope: Envelope) -> None:
        self.received.append(envelope)
        n = len(self.received)
        for target, event in self._waiters:
            if n >= target:
                event.set()

    async def wait_for(self, count: int, timeout: float = 30.0) -> None:
        if len(self.received) >= count:
            return
        event = asyncio.Event()
        self._waiters.append((count, event))
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: {len(self.received)} of {count} envelopes within {timeout} s"
            ) from None
        finally:
            self._waiters.remove((count, event))

    def by_key(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = defaultdict(list)
        for e in self.received:
            out[e.key].append(e.seq)
        return out


def live_tasks() -> set[asyncio.Task]:
    return set(asyncio.all_tasks())


def live_threads() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.ident is not None}


async def publish_many(bus, topic: str, n: int, keys: int, payload: bytes = b"x" * 64) -> None:
    for i in range(n):
        await bus.publish(topic, Envelope(key=f"k{i % keys}", type="test", payload=payload))

