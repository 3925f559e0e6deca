"""The Kafka bus places keyed records itself, once per key: exactly where aiokafka would."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from busmon.bus import Envelope, create_bus
from busmon.bus.codec import decode

KEYS = [f"order-{i}" for i in range(40)]


async def read_all(bootstrap: str, topic: str, partitions: int, count: int) -> list:
    """Every record of ``topic`` from the start, with its partition (bounded wait)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        records: list = []
        async with asyncio.timeout(30):
            while len(records) < count:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
        return records
    finally:
        await consumer.stop()


def aiokafka_would_place(key: str, partitions: int) -> int:
    every = list(range(partitions))
    return DefaultPartitioner()(key.encode(), every, every)


async def publish_round(bus, topic: str) -> None:
    for key in KEYS:
        await bus.publish(topic, Envelope(key=key, type="placed", payload=b"p"))


async def test_records_go_where_aiokafkas_own_partitioner_puts_them(kafka_broker, topic):
    bus = create_bus(kafka_broker.url, partitions=4)
    await bus.start()
    try:
        for _ in range(3):  # the first record of a key is placed by aiokafka, the others by the memo
            await publish_round(bus, topic)
        assert set(bus._placement.topics[topic]) == set(KEYS)
        await bus._producer.client.force_metadata_update()  # new metadata: every key placed afresh
        assert bus._placement.topics == {}
        await publish_round(bus, topic)
    finally:
        await bus.close()
    records = await read_all(kafka_broker.url.split("://", 1)[1], topic, 4, 4 * len(KEYS))
    seen: dict[str, list[int]] = {}
    for record in records:
        envelope = decode(record.value)
        assert record.partition == aiokafka_would_place(envelope.key, 4), envelope.key
        assert record.key == envelope.key.encode()
        seen.setdefault(envelope.key, []).append(envelope.seq)
    assert all(sorted(seqs) == [1, 2, 3, 4] for seqs in seen.values()) and len(seen) == len(KEYS)
    assert len({r.partition for r in records}) == 4  # 40 keys spread over every partition
