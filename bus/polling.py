"""Subscriptions whose own named task pulls batches from the broker and feeds the keyed pool.

Shared by the Kafka consumer and the JetStream pull consumer. Stopping cancels
the task only while it waits in a fetch (nothing has been handed out yet);
otherwise the batch in hand still reaches the pool, within the drain deadline.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from busmon.bus.base import BaseBus, BaseSubscription
from busmon.bus.codec import DecodeError, decode
from busmon.bus.envelope import Envelope
from busmon.bus.errors import BusError, BusFault
from busmon.bus.protocol import Handler

log = logging.getLogger("bus")


def count_undecodable(bus: BaseBus, exc: DecodeError, where: str) -> None:
    """Garbage from the wire is counted (and logged once), never raised."""
    bus.counters.decode_errors += 1
    if bus.counters.decode_errors == 1:
        log.error("undecodable message on %s: %s (logged once)", where, exc)


def decode_batch(bus: BaseBus, raws: list[Any], payload_of: Callable[[Any], bytes],
                 where: str) -> tuple[list[Envelope], list[Any], list[Any]]:
    """A fetched batch decoded: the envelopes, the records they came from, and the records that
    did not decode (counted). The whole batch at C speed; one bad record sends it through the
    careful loop."""
    try:
        return list(map(decode, map(payload_of, raws))), raws, []
    except DecodeError:
        pass
    envelopes: list[Envelope] = []
    kept: list[Any] = []
    bad: list[Any] = []
    for raw in raws:
        try:
            envelopes.append(decode(payload_of(raw)))
        except DecodeError as exc:
            count_undecodable(bus, exc, where)
            bad.append(raw)
        else:
            kept.append(raw)
    return envelopes, kept, bad


class PollingSubscription(BaseSubscription):
    """Subclasses say how to fetch a batch, where a record's frame is, and how to close the intake."""

    task_prefix = "bus.consumer"
    #: a raw record's frame (an attribute getter: this runs once per record)
    payload_of: Callable[[Any], bytes]
    #: whether each record is settled (acked) after its handler: the record is the token
    settles = False

    def __init__(self, bus: BaseBus, topic: str, handler: Handler, group: str | None) -> None:
        super().__init__(bus, topic, handler, group)
        self._stopping = False
        self._fetching = False
        self._stopped = False
        self.task = bus.tasks.spawn(self._run(), name=f"{self.task_prefix}:{topic}")

    async def _fetch(self) -> list[Any]:
        """The next batch of raw records (may be empty)."""
        raise NotImplementedError

    async def _reject(self, raw: Any) -> None:
        """A record that did not decode (already counted)."""

    async def _close_intake(self) -> None:
        """Stop the broker-side consumer once the loop has exited."""

    async def _run(self) -> None:
        """Fetch and hand out until stopped; an unexpected error ends the loop as a bus fault,
        said at once (not discovered when the load deadline expires)."""
        try:
            await self._loop()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._stopping or (task is not None and task.cancelling()):
                raise
            # nobody cancelled us: the library raised it (aiokafka #647)
            self.bus._fail(BusFault(f"{self.bus.describe()}: consumer {self.topic!r}: the client "
                                    "raised CancelledError"))
        except Exception as exc:
            self.bus._fail(BusFault(f"{self.bus.describe()}: consumer {self.topic!r} died: "
                                    f"{type(exc).__name__}: {exc}"))

    async def _loop(self) -> None:
        pool = self.bus.pool
        while not self._stopping:
            self._fetching = True
            try:
                batch = await self._fetch()
            finally:
                self._fetching = False
            envelopes, kept, bad = decode_batch(self.bus, batch, self.payload_of, self.topic)
            for raw in bad:
                await self._reject(raw)
            tokens = kept if self.settles else None
            # one hand-off per worker for the whole batch; what did not fit waits for room
            if left := pool.offer_many(self, envelopes, tokens):
                await pool.submit_many(left)
            # handed out: a stop cancels the next fetch, and the cancelled task's traceback keeps
            # this frame (and a whole batch of records) alive as long as the task object is
            batch = raw = envelopes = tokens = kept = bad = None  # type: ignore[assignment]

    async def _stop(self, deadline: float) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stopping = True
        if self._fetching:
            self.task.cancel()  # safe: a fetch in progress has handed nothing out yet
        loop = asyncio.get_running_loop()
        await asyncio.wait([self.task], timeout=max(0.0, deadline - loop.time()))
        if not self.task.done():  # a batch in hand that the pool would not take in time
            self.task.cancel()
            await asyncio.wait([self.task], timeout=self.bus.remaining(deadline))
        problems: list[str] = []
        await self.bus.shutdown_call(self._close_intake(), deadline, f"stopping consumer {self.topic!r}",
                                     problems)
        if problems:
            raise BusError("; ".join(problems))
