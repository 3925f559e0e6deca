"""What every built-in backend shares: lifecycle, stamping, counters, pool, close.

A backend implements ``_connect``, ``_publish``, ``_subscribe`` and
``_disconnect``; this class makes ``start``/``close`` safe to call in any order
and guarantees that when ``close()`` returns, every task the bus started has
exited (awaited, not merely cancelled).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import Any

from bus.counters import BusCounters
from bus.envelope import Envelope
from bus.errors import BusClosedError, BusConnectError
from bus.pool import DEFAULT_QUEUE_SIZE, DEFAULT_WORKERS, KeyedWorkerPool
from bus.protocol import Handler
from bus.tasks import OwnedTasks

log = logging.getLogger("bus")

DEFAULT_DRAIN_TIMEOUT_S = 5.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0


class State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    STARTED = "started"
    CLOSING = "closing"
    CLOSED = "closed"


_STARTED = State.STARTED  # a module constant: enum member lookup costs on every publish


class BaseSubscription:
    """A live subscription: a handler fed through the bus's keyed pool."""

    def __init__(self, bus: BaseBus, topic: str, handler: Handler, group: str | None) -> None:
        self.bus = bus
        self.topic = topic
        self.handler = handler
        self.group = group
        self.active = True

    async def settle(self, token: Any, ok: bool) -> None:
        """Backend hook after the handler ran (JetStream acks here)."""

    async def unsubscribe(self) -> None:
        """Stop delivery: after this returns the handler is not called again."""
        if not self.active:
            return
        self.active = False
        self.bus._subscriptions.discard(self)
        await self._stop()

    async def _stop(self) -> None:
        """Backend hook: stop the intake (consumer loop, broker subscription)."""


class BaseBus:
    """Shared lifecycle of the built-in backends."""

    scheme = "base"

    def __init__(
        self,
        *,
        workers: int = DEFAULT_WORKERS,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_S,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    ) -> None:
        if drain_timeout < 0 or connect_timeout <= 0:
            raise ValueError("drain_timeout must be >= 0 and connect_timeout > 0")
        self.counters = BusCounters()
        self.drain_timeout = drain_timeout
        self.connect_timeout = connect_timeout
        self.pool = KeyedWorkerPool(self.counters, workers=workers, queue_size=queue_size)
        self.tasks = OwnedTasks()
        self.state = State.NEW
        self._subscriptions: set[BaseSubscription] = set()
        self._seq: dict[str, int] = {}
        self._closed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()} {self.state.value}>"

    def describe(self) -> str:
        """Where this bus points (URL without credentials)."""
        return f"{self.scheme}://"

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self.state is not State.NEW:
            raise BusClosedError(f"start() on a bus that is {self.state.value}")
        self.state = State.STARTING
        self.pool.start()
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._connect()
        except Exception as exc:
            await self.close()
            if isinstance(exc, TimeoutError):
                raise BusConnectError(
                    f"{self.describe()}: no connection within {self.connect_timeout:g} s"
                ) from None
            if isinstance(exc, BusConnectError):
                raise
            reason = str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
            raise BusConnectError(f"{self.describe()}: {reason}") from exc
        self.state = State.STARTED

    async def close(self) -> None:
        """Stop subscriptions, drain in-flight envelopes, cancel and await the rest.

        Idempotent; safe after a failed ``start()``; a second concurrent call
        waits for the first.
        """
        if self.state in (State.CLOSING, State.CLOSED):
            await self._closed.wait()
            return
        self.state = State.CLOSING
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_timeout
        try:
            await self._stop_intake(deadline)
            if not await self.pool.drain(max(0.0, deadline - loop.time())):
                log.warning("%s: drain deadline passed with %d envelopes queued; cancelling",
                            self.describe(), self.pool.pending())
            for sub in list(self._subscriptions):
                sub.active = False
            self._subscriptions.clear()
            try:
                await self._disconnect(max(0.1, deadline - loop.time()))
            except Exception as exc:  # close must finish even if the broker is gone
                log.warning("%s: error while disconnecting: %s", self.describe(), exc)
        finally:
            await self.pool.stop()
            await self.tasks.cancel_and_wait()
            await self._after_close()
            self.state = State.CLOSED
            self._closed.set()

    # -- data path -----------------------------------------------------------

    def _check_started(self) -> None:
        if self.state is not State.STARTED:
            raise BusClosedError(f"{self.describe()} is {self.state.value}, not started")

    async def publish(self, topic: str, envelope: Envelope) -> None:
        """Publish one envelope; the bus stamps seq (per key) and ts_ns if they are 0."""
        if self.state is not _STARTED:
            self._check_started()
        if not envelope.seq or not envelope.ts_ns:
            seqs, key = self._seq, envelope.key
            seq = seqs.get(key, 0) + 1
            seqs[key] = seq
            envelope = envelope.stamped(seq, time.monotonic_ns())
        if not self._publish_nowait(topic, envelope):
            await self._publish(topic, envelope)
        counters = self.counters
        counters.published += 1
        counters.bytes_out += len(envelope.payload)

    async def subscribe(
        self, topic: str, handler: Handler, *, group: str | None = None
    ) -> BaseSubscription:
        """Subscribe; returns once live: everything published afterwards is delivered."""
        self._check_started()
        if not topic:
            raise ValueError("topic must be a non-empty string")
        if not callable(handler):
            raise TypeError("handler must be an async callable taking an Envelope")
        sub = await self._subscribe(topic, handler, group)
        self._subscriptions.add(sub)
        return sub

    # -- backend hooks -------------------------------------------------------

    async def _connect(self) -> None:
        """Connect to the broker (bounded by connect_timeout)."""

    def _publish_nowait(self, topic: str, envelope: Envelope) -> bool:
        """Fast path: publish without awaiting if that can be done now; False if not."""
        return False

    async def _publish(self, topic: str, envelope: Envelope) -> None:
        raise NotImplementedError

    async def _subscribe(self, topic: str, handler: Handler, group: str | None) -> BaseSubscription:
        raise NotImplementedError

    async def _stop_intake(self, deadline: float) -> None:
        """Stop every subscription's intake so the pool can drain."""
        for sub in list(self._subscriptions):
            try:
                await sub._stop()
            except Exception as exc:
                log.warning("%s: stopping %s: %s", self.describe(), sub.topic, exc)

    async def _disconnect(self, timeout: float) -> None:
        """Flush and close broker connections (bounded by ``timeout``)."""

    async def _after_close(self) -> None:
        """Await any task the client library started and only cancelled."""
