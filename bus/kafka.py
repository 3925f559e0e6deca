"""The Kafka backend (aiokafka): one shared producer, a consumer per subscription.

Defaults are tuned for low latency without losing records: ``linger_ms=5``
batches bursts, ``fetch_max_wait_ms=20`` bounds the idle end-to-end latency
(against Tansu, latency follows the fetch wait). Shorter waits (``linger_ms=0``
with a 1 ms fetch wait) lost records in earlier trials against Tansu.
"""

from __future__ import annotations

import asyncio
import logging
import operator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from busmon.bus.base import _STARTED, BaseBus
from busmon.bus.confirmations import Confirmations
from busmon.bus.kafka_placement import Placement
from busmon.bus.envelope import Envelope
from busmon.bus.connection import KafkaSecurity
from busmon.bus.errors import BusConnectError, BusError, BusRefusedError
from busmon.bus.refusal import kafka_refusal
from busmon.bus.polling import PollingSubscription
from busmon.bus.protocol import Handler

log = logging.getLogger("bus.kafka")

#: what a TLS bus keeps of its connect timeout to find out why the handshake did not finish
TLS_CHECK_S = 1.5


class _AssignmentListener(ConsumerRebalanceListener):
    """Sets an event when the group gives this member partitions."""

    def __init__(self) -> None:
        self.assigned = asyncio.Event()

    async def on_partitions_revoked(self, revoked) -> None:
        pass

    async def on_partitions_assigned(self, assigned) -> None:
        if assigned:
            self.assigned.set()


class KafkaSubscription(PollingSubscription):
    """One consumer and one named loop task (``bus.kafka.consumer:<topic>``) feeding the pool."""

    task_prefix = "bus.kafka.consumer"
    payload_of = operator.attrgetter("value")  # None for a tombstone: undecodable, counted

    def __init__(self, bus: KafkaBus, topic: str, handler: Handler, group: str | None,
                 consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        super().__init__(bus, topic, handler, group)

    async def _fetch(self) -> list[Any]:
        batches = await self.consumer.getmany(timeout_ms=500)
        return [record for records in batches.values() for record in records]

    async def _close_intake(self) -> None:
        problems: list[str] = []
        loop = asyncio.get_running_loop()
        await stop_consumer(self.bus, self.consumer, loop.time() + self.bus.close_timeout, problems)
        if problems:
            raise BusError("; ".join(problems))


def abandon_batches(producer: AIOKafkaProducer, exc: Exception) -> None:
    """Fail every batch still waiting in aiokafka's accumulator, and retrieve each failure.

    aiokafka has no public way to abandon unsent batches; its flush would wait for them
    forever, and every future it fails would otherwise be logged as 'exception was never
    retrieved' when collected.
    """
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is None:
        return
    batches = [b for q in getattr(accumulator, "_batches", {}).values() for b in q]
    batches += list(getattr(accumulator, "_pending_batches", ()))
    accumulator.fail_all(exc)
    for batch in batches:
        futures = [getattr(batch, "future", None), getattr(batch, "_drain_waiter", None)]
        futures += [f for f, _ in getattr(batch, "_msg_futures", ())]
        for future in futures:
            if isinstance(future, asyncio.Future) and future.done() and not future.cancelled():
                future.exception()


async def stop_consumer(bus: BaseBus, consumer: AIOKafkaConsumer, deadline: float,
                        problems: list[str]) -> None:
    """``consumer.stop()`` within ``deadline``; if it hangs or raises (aiokafka #647, #1101),
    close its client directly so its connections and tasks still go."""
    if await bus.shutdown_call(consumer.stop(), deadline, "kafka consumer.stop()", problems):
        return
    client = getattr(consumer, "_client", None)
    if client is not None:
        await bus.shutdown_call(client.close(), deadline, "kafka consumer client close()", problems)


class KafkaBus(BaseBus):
    """Kafka through aiokafka; the envelope key is the record key."""

    scheme = "kafka"

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        partitions: int = 4,
        replication_factor: int = 1,
        linger_ms: int = 5,
        fetch_max_wait_ms: int = 20,
        max_batch_size: int = 65536,
        client_id: str = "busmon",
        security_protocol: str | None = None,
        sasl_mechanism: str | None = None,
        user: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        key_password: str | None = None,
        tls: bool | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        #: SASL and TLS, given to every client the bus makes (see bus.connection)
        self.security = KafkaSecurity.from_options(
            security_protocol=security_protocol, sasl_mechanism=sasl_mechanism, user=user, password=password,
            ca_file=ca_file, cert_file=cert_file, key_file=key_file, key_password=key_password, tls=tls)
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self.bootstrap_servers = bootstrap_servers
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.linger_ms = linger_ms
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.max_batch_size = max_batch_size
        self.client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._topics: set[str] = set()
        self._topic_lock = asyncio.Lock()
        self._confirmations = Confirmations(self.counters, log, "kafka")
        self._placement = Placement()

    def describe(self) -> str:
        return f"kafka://{self.bootstrap_servers}"

    @property
    def uses_tls(self) -> bool:
        return self.security.context is not None

    def _timeout_ms(self) -> int:
        return max(1000, int(self.connect_timeout * 1000))

    async def _connect(self) -> None:
        # a TLS handshake with a plaintext listener hangs (the broker reads the ClientHello as
        # a frame length and waits): keep time to say so before the connect deadline
        budget = max(1.0, self.connect_timeout - TLS_CHECK_S) if self.security.context is not None else None
        try:
            async with asyncio.timeout(budget):
                await self._start_clients()
        except Exception as exc:
            if (refused := await self._refusal()) is not None:
                raise refused from None
            if isinstance(exc, TimeoutError):
                raise BusConnectError(f"{self.describe()}: no connection within {budget:g} s "
                                      f"({self.security.describe()})") from None
            raise exc

    async def _start_clients(self) -> None:
        """The producer and the admin client, with the bus's TLS and SASL settings."""
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            linger_ms=self.linger_ms,
            max_batch_size=self.max_batch_size,
            partitioner=self._placement.partitioner,
            request_timeout_ms=max(self._timeout_ms(), 10000),
            **self.security.client_kwargs(),
        )
        await self._producer.start()
        self._producer.client.cluster.add_listener(self._placement.forget)
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap_servers,
            client_id=f"{self.client_id}-admin",
            request_timeout_ms=max(self._timeout_ms(), 10000),
            **self.security.client_kwargs(),
        )
        await self._admin.start()

    async def _refusal(self) -> BusRefusedError | None:
        """Why the broker refused us, if it did: one connection to the first address with the
        bus's TLS and SASL settings, since aiokafka only logs the reason ("Unable to bootstrap")
        or, for SCRAM, raises a bare ``KeyError('v')`` from its exchange."""
        host, _, port = self.bootstrap_servers.split(",")[0].rpartition(":")
        return await kafka_refusal(host.strip("[]"), int(port), self.security, self.client_id,
                                   min(self.connect_timeout, TLS_CHECK_S))

    async def ensure_topic(self, topic: str) -> None:
        """Create ``topic`` with the configured partition count if it does not exist."""
        if topic in self._topics:
            return
        async with self._topic_lock:
            if topic in self._topics:
                return
            assert self._admin is not None
            try:
                await self._admin.create_topics(
                    [NewTopic(topic, self.partitions, self.replication_factor)]
                )
            except TopicAlreadyExistsError:
                pass
            self._topics.add(topic)

    async def publish(self, topic: str, envelope: Envelope) -> None:
        """:meth:`BaseBus.publish` in one step for Kafka: stamped as it is framed, and straight to
        aiokafka (the hot path: each layer saved shows against the raw client)."""
        if self.state is not _STARTED:
            self._check_started()
        data = self._framer.frame(envelope)
        placed = self._placement.topics.get(topic)
        where = placed.get(envelope[0]) if placed is not None else None
        if where is not None:  # (topic, value, key, partition)
            future = await self._producer.send(topic, data, where[0], where[1])  # type: ignore[union-attr]
        else:
            future = await self._send_placing(topic, envelope[0], data)
        self._confirmations.add(future)
        counters = self.counters
        counters.published += 1
        counters.bytes_out += len(envelope[2])

    async def _send_placing(self, topic: str, key: str, data: bytes) -> asyncio.Future:
        """Send a record of a key whose partition is not known yet: aiokafka places it, and the
        bus remembers where, for the key's next records (see bus.kafka_placement)."""
        if topic not in self._topics:
            await self.ensure_topic(topic)
        producer = self._producer
        assert producer is not None
        key_bytes = key.encode()
        future = await producer.send(topic, data, key_bytes)
        self._placement.learn(topic, key, key_bytes, producer.client.cluster)
        return future

    async def _subscribe(self, topic: str, handler: Handler, group: str | None) -> KafkaSubscription:
        await self.ensure_topic(topic)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            client_id=self.client_id,
            group_id=group,
            enable_auto_commit=group is not None,
            **self.security.client_kwargs(),
            auto_offset_reset="latest",
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            request_timeout_ms=max(self._timeout_ms(), 40000),
        )
        try:
            await self._make_live(consumer, topic, group)
        except BaseException:  # not live in time (cancelled by subscribe's deadline) or failed
            await stop_consumer(self, consumer, asyncio.get_running_loop().time() + self.connect_timeout, [])
            raise
        return KafkaSubscription(self, topic, handler, group, consumer)

    async def _make_live(self, consumer: AIOKafkaConsumer, topic: str, group: str | None) -> None:
        """Return only once every record published from now on will be consumed."""
        if group is None:
            await consumer.start()
            partitions = await self._partitions(consumer, topic)
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            for tp in tps:  # resolves "latest" to a fixed offset now, not at first fetch
                await consumer.position(tp)
            return
        listener = _AssignmentListener()
        consumer.subscribe([topic], listener=listener)
        await consumer.start()
        await listener.assigned.wait()  # Tansu takes ~5 s to complete a join
        positions = {tp: await consumer.position(tp) for tp in consumer.assignment()}
        # commit the resolved positions so a member joining later starts from
        # here rather than from "latest" at its own join, which would skip records
        await consumer.commit(positions)

    async def _partitions(self, consumer: AIOKafkaConsumer, topic: str) -> set[int]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout
        while True:
            await consumer.topics()  # refreshes metadata
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                return partitions
            if loop.time() > deadline:
                raise TimeoutError(f"topic {topic!r} has no partitions after {self.connect_timeout} s")

    async def _disconnect(self, deadline: float, problems: list[str]) -> None:
        producer = self._producer
        if producer is not None:
            # unconfirmed publishes are waited for within the drain deadline, like queued envelopes
            drain_deadline = min(deadline, self._closing_at + self.drain_timeout)
            if unconfirmed := await self._confirmations.wait(drain_deadline - asyncio.get_running_loop().time()):
                problems.append(f"{unconfirmed} publishes unconfirmed at close")
            if not await self.shutdown_call(producer.stop(), deadline, "kafka producer.stop()", problems):
                # stop() hangs while the broker is gone (aiokafka #1101), and leaves its flush
                # task waiting for batches that will never be sent: fail those batches, stop
                # the sender and the connections directly, so no aiokafka task outlives close
                abandon_batches(producer, KafkaConnectionError("producer closed with the broker unreachable"))
                sender = getattr(producer, "_sender", None)
                if sender is not None:
                    await self.shutdown_call(sender.close(), deadline, "kafka producer sender close()",
                                             problems)
                await self.shutdown_call(producer.client.close(), deadline,
                                         "kafka producer client close()", problems)
        if self._admin is not None:
            await self.shutdown_call(self._admin.close(), deadline, "kafka admin.close()", problems)
