"""What a thin bus shares: one that puts busmon's envelopes straight onto a client or a framework.

The raw-client backends (``bus/raw_clients.py``) and the FastStream backends
(``bus/faststream_bus.py``) have no keyed pool and no ``BaseBus`` lifecycle: the client or the
framework consumes and runs the handlers, and its own close is what busmon measures. What they
share is here: checked deadlines, state, stamping and counting a publish, decoding and counting a
delivery (a handler's error counted and logged once per type), bounded calls, and waiting for a
Kafka consumer's partitions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from busmon.bus.codec import DecodeError, decode, encode
from busmon.bus.counters import BusCounters
from busmon.bus.deadline import CallTimeout, LibraryCancelled, bounded
from busmon.bus.envelope import Envelope
from busmon.bus.errors import BusClosedError, BusConnectError, BusError
from busmon.bus.protocol import Handler

#: how often a Kafka subscription looks whether its consumer has partitions yet
ASSIGNMENT_POLL_S = 0.02


class ThinBus:
    """State, counters and the shared steps of a thin bus; ``scheme`` and ``log`` per subclass."""

    scheme = "thin"
    log = logging.getLogger("bus.thin")

    def __init__(self, servers: list[str], *, connect_timeout: float = 5.0, subscribe_timeout: float = 60.0,
                 close_timeout: float = 10.0, drain_timeout: float | None = None) -> None:
        for name, value in (("connect_timeout", connect_timeout), ("subscribe_timeout", subscribe_timeout),
                            ("close_timeout", close_timeout)):
            check_seconds(name, value)
        self.servers = servers
        #: busmon fits a built-in bus's drain inside its close deadline and passes it to every bus
        #: it makes from a URL; a thin bus with a drain of its own uses it (FastStream's graceful stop)
        self.drain_timeout = drain_timeout
        self.connect_timeout = connect_timeout
        self.subscribe_timeout = subscribe_timeout
        self.close_timeout = close_timeout
        self.counters = BusCounters()
        self.state = "new"
        self._seq: dict[str, int] = {}
        self._errors_logged: set[type] = set()

    def where(self) -> str:
        """The broker addresses, without schemes: ``127.0.0.1:4222``."""
        return ",".join(s.split("://", 1)[-1] for s in self.servers)

    def describe(self) -> str:
        return f"{self.scheme}://{self.where()}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()} {self.state}>"

    def _started(self, what: str) -> None:
        if self.state != "started":
            raise BusClosedError(f"{what} on a bus that is {self.state}")

    def _starting(self) -> None:
        if self.state != "new":
            raise BusClosedError(f"start() on a bus that is {self.state}")
        self.state = "starting"

    def _connect_error(self, exc: BaseException) -> BusConnectError:
        """``faststream+nats 127.0.0.1:4222: <why>``"""
        return BusConnectError(f"{self.scheme} {self.where()}: {str(exc) or type(exc).__name__}")

    async def _call(self, call: Any, timeout: float, what: str) -> Any:
        """One call into the client under a deadline; a timeout or the library's own cancellation
        is a :class:`BusError` naming the call."""
        try:
            return await bounded(call, timeout, what, name=f"{self.log.name}.call")
        except (CallTimeout, LibraryCancelled) as exc:
            raise BusError(str(exc)) from None

    def _frame(self, envelope: Envelope) -> tuple[Envelope, bytes]:
        """Stamp ``seq`` (per key) and ``ts_ns`` where 0, and encode."""
        self._started("publish()")
        if not envelope.seq or not envelope.ts_ns:
            seq = envelope.seq or self._seq.get(envelope.key, 0) + 1
            envelope = envelope._replace(seq=seq, ts_ns=envelope.ts_ns or time.monotonic_ns())
        self._seq[envelope.key] = envelope.seq
        return envelope, encode(envelope)

    def _published(self, frame: bytes) -> None:
        """Count a publish the client has taken."""
        self.counters.published += 1
        self.counters.bytes_out += len(frame)

    async def _deliver(self, handler: Handler, body: bytes) -> None:
        """Decode one frame and run the handler; its error is counted and logged once per type,
        never handed back to the client (a framework would nack it, and so redeliver)."""
        counters = self.counters
        try:
            envelope = decode(body)
        except DecodeError:
            counters.decode_errors += 1
            return
        counters.delivered += 1
        counters.bytes_in += len(body)
        try:
            await handler(envelope)
        except Exception as exc:
            counters.handler_errors += 1
            if type(exc) not in self._errors_logged:
                self._errors_logged.add(type(exc))
                self.log.warning("handler raised %s: %s (counted; further ones of this type are not logged)",
                                 type(exc).__name__, exc)

    async def _assigned(self, consumer_of: Any, topic: str, deadline: float) -> None:
        """Until the Kafka consumer (``consumer_of()``: it may not exist yet) has partitions, as
        after a group join, or ``deadline`` (the loop's clock)."""
        loop = asyncio.get_running_loop()
        while True:
            consumer = consumer_of()
            if consumer is not None and consumer.assignment():
                return
            if loop.time() >= deadline:
                raise BusError(f"subscribe({topic!r}): the Kafka consumer had no partitions within "
                               f"{self.subscribe_timeout:g} s (group join)")
            await asyncio.sleep(ASSIGNMENT_POLL_S)  # aiokafka has no event for an assignment


def check_seconds(name: str, value: Any) -> None:
    if type(value) not in (int, float) or not value > 0:
        raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
