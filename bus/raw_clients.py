"""The raw clients as buses: aiokafka and nats-py used directly, with nothing in between.

``busmon compare`` puts these beside busmon's own bus and the FastStream backends on one table,
so what a bus or a framework costs is read against the client it is built on. No keyed pool,
no framework: a handler runs in the client's own consumer (nats-py's callback task per
subscription, one consumer loop per Kafka subscription), in order per subscription. Every
client call is bounded; close stops what was started and awaits it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from busmon.bus.deadline import bounded, cancel_and_wait
from busmon.bus.envelope import Envelope
from busmon.bus.protocol import Handler
from busmon.bus.thin import ThinBus

log = logging.getLogger("bus.raw")

SCHEMES = ("raw+kafka", "raw+nats")


class RawNatsSubscription:
    def __init__(self, bus: RawNatsBus, sub: Any) -> None:
        self.bus, self.sub, self.active = bus, sub, True

    async def unsubscribe(self) -> None:
        if self.active:
            self.active = False
            await self.bus._call(self.sub.unsubscribe(), self.bus.close_timeout, "unsubscribe()")


class RawNatsBus(ThinBus):
    """nats-py core: ``nc.publish``; ``nc.subscribe(topic, queue=group, cb=…)``, live once the
    server has the subscription (a flush); close is ``nc.close()``."""

    scheme = "raw+nats"
    log = log

    def __init__(self, servers: list[str], **options: Any) -> None:
        super().__init__(servers, **options)
        self.nc: Any = None

    async def start(self) -> None:
        self._starting()
        import nats

        try:
            self.nc = await bounded(nats.connect(self.servers, allow_reconnect=False,
                                                 connect_timeout=self.connect_timeout),
                                    self.connect_timeout, "connect", name="bus.raw.call")
        except Exception as exc:
            self.state = "closed"
            raise self._connect_error(exc) from None
        self.state = "started"

    async def publish(self, topic: str, envelope: Envelope) -> None:
        _, frame = self._frame(envelope)
        await self.nc.publish(topic, frame)
        self._published(frame)

    async def subscribe(self, topic: str, handler: Handler, *, group: str | None = None) -> RawNatsSubscription:
        self._started("subscribe()")

        async def cb(msg: Any) -> None:
            await self._deliver(handler, msg.data)

        sub = await self._call(self.nc.subscribe(topic, queue=group or "", cb=cb), self.subscribe_timeout,
                               f"subscribe({topic!r})")
        await self._call(self.nc.flush(), self.subscribe_timeout, "flush()")  # the server has it: live
        return RawNatsSubscription(self, sub)

    async def close(self) -> None:
        if self.state in ("closing", "closed"):
            return
        self.state = "closing"
        try:
            if self.nc is not None:
                await self._call(self.nc.close(), self.close_timeout, "close()")
        finally:
            self.state = "closed"


class RawKafkaSubscription:
    def __init__(self, bus: RawKafkaBus, consumer: Any, loop_task: asyncio.Task) -> None:
        self.bus, self.consumer, self.task, self.active = bus, consumer, loop_task, True

    async def unsubscribe(self) -> None:
        if not self.active:
            return
        self.active = False
        self.bus._subscriptions.discard(self)
        await cancel_and_wait([self.task], grace=self.bus.close_timeout)
        await self.bus._call(self.consumer.stop(), self.bus.close_timeout, "consumer.stop()")


class RawKafkaBus(ThinBus):
    """aiokafka: one producer (``send``, the record's future not awaited); per subscription a
    consumer (a group joins, ``group=None`` is assigned every partition) read by one loop task
    that runs the handler per record. Topics are created with ``partitions`` (4)."""

    scheme = "raw+kafka"
    log = log

    def __init__(self, servers: list[str], *, partitions: int = 4, **options: Any) -> None:
        super().__init__(servers, **options)
        if type(partitions) is not int or partitions < 1:
            raise ValueError(f"partitions must be a whole number >= 1, got {partitions!r}")
        self.partitions = partitions
        self.bootstrap = ",".join(servers)
        self.producer: Any = None
        self.admin: Any = None
        self._topics: set[str] = set()
        self._subscriptions: set[RawKafkaSubscription] = set()

    async def start(self) -> None:
        self._starting()
        from aiokafka import AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient

        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            await bounded(asyncio.gather(self.producer.start(), self.admin.start()), self.connect_timeout,
                          "connect", name="bus.raw.call")
        except Exception as exc:
            await self._stop_clients()
            self.state = "closed"
            raise self._connect_error(exc) from None
        self.state = "started"

    async def _topic(self, topic: str) -> None:
        if topic in self._topics:
            return
        from aiokafka.admin import NewTopic
        from aiokafka.errors import TopicAlreadyExistsError

        try:
            await self._call(self.admin.create_topics([NewTopic(topic, self.partitions, 1)]), self.subscribe_timeout,
                             f"create_topics({topic!r})")
        except TopicAlreadyExistsError:
            pass
        self._topics.add(topic)

    async def publish(self, topic: str, envelope: Envelope) -> None:
        envelope, frame = self._frame(envelope)
        await self.producer.send(topic, value=frame, key=envelope.key.encode())
        self._published(frame)

    async def subscribe(self, topic: str, handler: Handler, *, group: str | None = None) -> RawKafkaSubscription:
        self._started("subscribe()")
        from aiokafka import AIOKafkaConsumer, TopicPartition

        await self._topic(topic)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=group,
                                    auto_offset_reset="earliest", enable_auto_commit=group is not None)
        deadline = asyncio.get_running_loop().time() + self.subscribe_timeout
        try:
            if group is None:
                await self._call(consumer.start(), self.subscribe_timeout, "consumer.start()")
                consumer.assign([TopicPartition(topic, p) for p in range(self.partitions)])
            else:
                consumer.subscribe([topic])
                await self._call(consumer.start(), self.subscribe_timeout, "consumer.start()")
                await self._assigned(lambda: consumer, topic, deadline)
        except BaseException:
            await bounded(consumer.stop(), self.close_timeout, "consumer.stop()", name="bus.raw.call")
            raise
        task = asyncio.create_task(self._consume(consumer, handler), name=f"bus.raw.consumer:{topic}")
        sub = RawKafkaSubscription(self, consumer, task)
        self._subscriptions.add(sub)
        return sub

    async def _consume(self, consumer: Any, handler: Handler) -> None:
        async for record in consumer:
            await self._deliver(handler, record.value)

    async def close(self) -> None:
        if self.state in ("closing", "closed"):
            return
        self.state = "closing"
        try:
            for sub in list(self._subscriptions):
                await sub.unsubscribe()
            if self.producer is not None:
                await self._call(self.producer.flush(), self.close_timeout, "producer.flush()")
        finally:
            await self._stop_clients()
            self.state = "closed"

    async def _stop_clients(self) -> None:
        for what, client in (("producer.stop()", self.producer), ("admin.close()", self.admin)):
            if client is None:
                continue
            try:
                call = client.stop() if what.startswith("producer") else client.close()
                await bounded(call, self.close_timeout, what, name="bus.raw.call")
            except Exception as exc:  # every client still gets its stop; the first problem is logged
                log.warning("%s: %s", what, exc)
