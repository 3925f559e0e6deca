"""Broker confirmations of publishes, checked in order without a callback per message.

A done-callback per publish costs one event-loop handle per message; instead
the futures queue up and the finished ones at the head are reaped in bulk, every
:data:`REAP_EVERY` publishes, and at close.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from busmon.bus.counters import BusCounters

#: publishes between two reaps of the finished confirmations
REAP_EVERY = 64


class Confirmations:
    """Futures of publishes not yet known to have succeeded."""

    def __init__(self, counters: BusCounters, log: logging.Logger, what: str) -> None:
        self._counters = counters
        self._log = log
        self._what = what
        self._pending: deque[asyncio.Future] = deque()
        self._added = 0  # since the last reap

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, future: asyncio.Future) -> None:
        self._pending.append(future)
        self._added += 1
        if self._added >= REAP_EVERY:  # the finished ones at the head, now and then, in bulk
            self._added = 0
            self.reap()

    def reap(self) -> None:
        """Check and drop the confirmations that have come, in order from the oldest."""
        pending = self._pending
        popleft = pending.popleft
        while pending and pending[0].done():
            future = popleft()
            try:
                if future.exception() is None:  # one call for the common case: it succeeded
                    continue
            except asyncio.CancelledError:
                pass
            self._failed(future)

    def _failed(self, future: asyncio.Future) -> None:
        self._counters.publish_errors += 1
        if self._counters.publish_errors == 1:
            self._log.error("%s publish failed: %r (logged once)", self._what,
                            None if future.cancelled() else future.exception())

    async def wait(self, timeout: float) -> int:
        """Wait for every outstanding confirmation; return how many were still unconfirmed when
        ``timeout`` passed (0: all confirmed). Those count as failed publishes."""
        pending = self._pending
        if pending:
            await asyncio.wait(list(pending), timeout=max(0.0, timeout))
        self.reap()
        unconfirmed = 0
        for future in pending:
            if future.done():
                if future.cancelled() or future.exception() is not None:
                    self._failed(future)
                continue
            future.cancel()
            unconfirmed += 1
            self._counters.publish_errors += 1
        pending.clear()
        if unconfirmed:
            self._log.warning("%s: %d publishes unconfirmed at close", self._what, unconfirmed)
        return unconfirmed
