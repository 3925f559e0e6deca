"""busmon's bus over FastStream, the framework most Python services use for Kafka and NATS.

Thin on purpose: FastStream connects, consumes, runs the handlers and shuts down
(``broker.stop()``), so what busmon measures is FastStream's shutdown, not this adapter's. The
adapter only does what FastStream does not do for a bus that subscribes at run time and carries
raw bytes (the pitfalls a hand-written adapter falls into, each found the hard way):

- subscribers made after ``start()`` (``persistent=False``) live in a WeakSet inside FastStream:
  an adapter that keeps no strong reference loses them silently. Kept here until unsubscribed;
- bytes published without a content type are JSON-guessed on receipt (``b"42"`` arrives as the
  int 42): a raw decoder hands the handler the frame as sent, and the handler takes it as a
  plain positional argument (``Context("message")`` resolves through a worker thread per message);
- JetStream streams are declared only inside ``broker.start()``: declared here per topic; a
  group is one durable pull consumer per (group, topic) (a push consumer's queue would have to
  equal its durable in nats-py, and FastStream warns against durable push consumers);
- FastStream's Kafka subscriber returns from ``start()`` before the consumer has partitions:
  ``subscribe()`` here returns once it has them (bounded), reading busmon's fresh topics from
  their earliest offset, so nothing published after ``subscribe()`` returned can be missed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from busmon.bus.deadline import bounded
from busmon.bus.envelope import Envelope
from busmon.bus.errors import BusConfigError
from busmon.bus.protocol import Handler
from busmon.bus.thin import ThinBus, check_seconds

log = logging.getLogger("bus.faststream")

SCHEMES = ("faststream+kafka", "faststream+nats", "faststream+nats+js")
#: a JetStream group member pulls up to this many messages at once, waiting up to this long
PULL_BATCH = 64
PULL_WAIT_S = 1.0


def _import_faststream(scheme: str) -> Any:
    """The FastStream module for ``scheme``, or one line saying how to install it."""
    try:
        if scheme == "faststream+kafka":
            import faststream.kafka as module
        else:
            import faststream.nats as module
    except ImportError as exc:
        raise BusConfigError(f"{scheme}:// needs FastStream, an optional part of busmon: install busmon "
                             f"with its faststream extra (in busmon's folder: pip install -e '.[faststream]')"
                             f" ({exc})") from None
    return module


async def _raw(message: Any) -> bytes:
    """FastStream's decoder: the body as sent (never JSON-guessed)."""
    return bytes(message.body)


class FastStreamSubscription:
    """One FastStream subscriber made at run time, kept alive here until unsubscribed."""

    def __init__(self, bus: FastStreamBus, subscriber: Any, topic: str, group: str | None) -> None:
        self.bus = bus
        self.subscriber = subscriber
        self.topic = topic
        self.group = group
        self.active = True

    async def unsubscribe(self) -> None:
        """Stop delivery (FastStream's own ``stop()`` of the subscriber, bounded)."""
        if not self.active:
            return
        self.active = False
        self.bus._subscriptions.discard(self)
        await self.bus._call(self.subscriber.stop(), self.bus.close_timeout, f"unsubscribe({self.topic!r})")


class FastStreamBus(ThinBus):
    """busmon's bus on a FastStream broker: ``faststream+kafka://``, ``faststream+nats://``,
    ``faststream+nats+js://``.

    Options: ``confirm`` (publish waits for the broker's acknowledgement, FastStream's default;
    False: Kafka's ``no_confirm``, JetStream published as core NATS, which the stream still
    stores), ``max_workers`` (FastStream's handler concurrency per subscriber; above 1, order per
    key is not kept), ``partitions`` (Kafka topics FastStream creates), ``storage`` (JetStream:
    ``file`` or ``memory``), ``stop_broker`` (False: close without ``broker.stop()``, the negative
    control that shows what FastStream leaves running), and the deadlines ``connect_timeout``,
    ``subscribe_timeout``, ``close_timeout``, ``graceful_timeout`` (FastStream's own wait for
    handlers in flight at stop).
    """

    log = log

    def __init__(self, scheme: str, servers: list[str], *, confirm: bool = True, max_workers: int = 1,
                 partitions: int = 4, storage: str = "file", stop_broker: bool = True,
                 graceful_timeout: float = 5.0, **options: Any) -> None:
        if scheme not in SCHEMES:
            raise BusConfigError(f"{scheme}://: expected one of {', '.join(s + '://' for s in SCHEMES)}")
        super().__init__(servers, **options)
        check_seconds("graceful_timeout", graceful_timeout)
        for name, value in (("max_workers", max_workers), ("partitions", partitions)):
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        for name, value in (("confirm", confirm), ("stop_broker", stop_broker)):
            if type(value) is not bool:
                raise ValueError(f"{name} must be true or false, got {value!r}")
        if storage not in ("file", "memory"):
            raise ValueError(f"storage must be 'file' or 'memory', got {storage!r}")
        self.scheme = scheme
        self.confirm = confirm
        self.max_workers = max_workers
        self.partitions = partitions
        self.storage = storage
        self.stop_broker = stop_broker
        self.graceful_timeout = graceful_timeout
        # busmon's drain, fitted inside its close deadline, is FastStream's graceful stop here
        if self.drain_timeout is not None:
            self.graceful_timeout = max(0.1, min(graceful_timeout, self.drain_timeout))
        self.module = _import_faststream(scheme)
        self.broker: Any = None
        self._subscriptions: set[FastStreamSubscription] = set()
        self._streams: set[str] = set()

    @property
    def kafka(self) -> bool:
        return self.scheme == "faststream+kafka"

    @property
    def jetstream(self) -> bool:
        return self.scheme == "faststream+nats+js"

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._starting()
        m = self.module
        if self.kafka:
            # aiokafka's request timeout stays at its 40 s: a JoinGroup request waits for every
            # member to rejoin (Tansu: ~5 s), so a shorter one fails the second member's join
            self.broker = m.KafkaBroker(self.servers, decoder=_raw, logger=None,
                                        graceful_timeout=self.graceful_timeout)
        else:
            self.broker = m.NatsBroker(self.servers, decoder=_raw, logger=None, allow_reconnect=False,
                                       connect_timeout=self.connect_timeout,
                                       graceful_timeout=self.graceful_timeout)
        try:
            await bounded(self.broker.start(), self.connect_timeout, "connect", name="bus.faststream.call")
        except Exception as exc:
            await self._stop_quietly()
            self.state = "closed"
            raise self._connect_error(exc) from None
        self.state = "started"

    async def close(self) -> None:
        """``broker.stop()`` (FastStream stops every subscriber, waits up to graceful_timeout
        for handlers, closes its clients), bounded by ``close_timeout``. Idempotent."""
        if self.state in ("closing", "closed"):
            return
        self.state = "closing"
        try:
            if self.broker is not None and self.stop_broker:
                await self._call(self.broker.stop(), self.close_timeout, "broker.stop()")
        finally:
            # only now: FastStream holds run-time subscribers weakly, and stop() must still find them
            self._subscriptions.clear()
            self.state = "closed"

    async def _stop_quietly(self) -> None:
        if self.broker is None:
            return
        try:
            await bounded(self.broker.stop(), self.close_timeout, "broker.stop()", name="bus.faststream.call")
        except Exception:  # the start already failed: that is what is reported
            pass

    # -- publishing ----------------------------------------------------------------------------

    async def publish(self, topic: str, envelope: Envelope) -> None:
        envelope, frame = self._frame(envelope)
        if self.kafka:
            await self.broker.publish(frame, topic, key=envelope.key.encode(), no_confirm=not self.confirm)
        elif self.jetstream and self.confirm:
            await self.broker.publish(frame, topic, stream=_stream_name(topic))
        else:
            await self.broker.publish(frame, topic)
        self._published(frame)

    # -- subscribing ---------------------------------------------------------------------------

    async def subscribe(self, topic: str, handler: Handler, *, group: str | None = None) -> FastStreamSubscription:
        self._started("subscribe()")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.subscribe_timeout
        subscriber = await self._subscriber(topic, group)
        subscriber(self._deliverer(handler))
        await self._call(subscriber.start(), max(0.01, deadline - loop.time()), f"subscribe({topic!r})")
        sub = FastStreamSubscription(self, subscriber, topic, group)
        self._subscriptions.add(sub)  # FastStream holds run-time subscribers only weakly
        if self.kafka:  # FastStream's start() returns before the consumer has its partitions
            await self._assigned(lambda: getattr(subscriber, "consumer", None), topic, deadline)
        return sub

    async def _subscriber(self, topic: str, group: str | None) -> Any:
        m, common = self.module, {"persistent": False, "max_workers": self.max_workers}
        if self.kafka:
            return self.broker.subscriber(m.Topic(topic, num_partitions=self.partitions), group_id=group,
                                          auto_offset_reset="earliest", **common)
        if not self.jetstream:
            return self.broker.subscriber(topic, queue=group or "", **common)
        await self._declare_stream(topic)
        stream = m.JStream(_stream_name(topic), subjects=[topic], declare=False)
        if group is None:
            return self.broker.subscriber(topic, stream=stream, deliver_policy=m.DeliverPolicy.ALL, **common)
        # a group is one durable pull consumer per (group, topic), its members pulling from it in
        # turn (FastStream's advice; a push consumer's queue must equal its durable in nats-py)
        return self.broker.subscriber(topic, stream=stream, durable=_durable(group, topic),
                                      pull_sub=m.PullSub(batch_size=PULL_BATCH, timeout=PULL_WAIT_S),
                                      deliver_policy=m.DeliverPolicy.ALL, **common)

    async def _declare_stream(self, topic: str) -> None:
        """FastStream declares streams only inside ``broker.start()``: a topic met later gets its
        stream here (an existing one is reused)."""
        name = _stream_name(topic)
        if name in self._streams:
            return
        from nats.js.api import StorageType

        js = self.broker.connection.jetstream()
        storage = StorageType.MEMORY if self.storage == "memory" else StorageType.FILE
        await self._call(js.add_stream(name=name, subjects=[topic], storage=storage),
                         self.subscribe_timeout, f"add_stream({name!r})")
        self._streams.add(name)

    def _deliverer(self, handler: Handler) -> Callable[[bytes], Any]:
        """What FastStream calls per message, with the body as sent (the raw decoder's)."""
        deliver_frame = self._deliver

        async def deliver(body: bytes) -> None:
            await deliver_frame(handler, body)

        return deliver


def _stream_name(topic: str) -> str:
    return "BUSMON_" + "".join(c if c.isalnum() or c in "-_" else "_" for c in topic)


def _durable(group: str, topic: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{group}_{topic}")
