"""An aiokafka consumer service, small and real: the shape busmon run judges at shutdown.

It produces ``--messages`` orders to a topic, consumes them in a consumer group, and shuts
down when it has seen them all (or on SIGTERM / Ctrl-C): the consumer and producer stopped,
as a service should. ``--leak`` forgets to stop the consumer, the post-mortem's bug in
miniature: its fetch and heartbeat tasks and its sockets outlive the service's main().

    busmon run -- python sample_configs/services/kafka_consumer.py --bootstrap 127.0.0.1:9092
    busmon run -- python sample_configs/services/kafka_consumer.py --bootstrap 127.0.0.1:9092 --leak

(``busmon brokers`` starts a Kafka-compatible broker on 127.0.0.1 and prints its address.)
Without busmon it runs the same; the marks then cost nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

import busmon.agent


async def main(args: argparse.Namespace) -> None:
    topic = args.topic or f"orders-{uuid.uuid4().hex[:8]}"
    bootstrap = args.bootstrap.removeprefix("kafka://")  # as busmon brokers prints it, or host:port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"{topic}-service",
                                auto_offset_reset="earliest", request_timeout_ms=10_000)
    await producer.start()
    await consumer.start()
    busmon.agent.mark("ready")
    seen = 0
    async with busmon.agent.phase("load"):
        for i in range(args.messages):
            await producer.send(topic, f"order {i}".encode(), key=str(i % 8).encode())
        await producer.flush()
        while seen < args.messages and not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=500)
            seen += sum(len(records) for records in batches.values())
    print(f"consumed {seen} of {args.messages} orders", flush=True)
    await producer.stop()
    if not args.leak:
        await consumer.stop()
    busmon.agent.mark("stopped")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", default="127.0.0.1:9092", help="the broker: host:port, or kafka://host:port")
    p.add_argument("--topic", default="", help="the topic (default: a fresh one)")
    p.add_argument("--messages", type=int, default=200, help="orders to produce and consume")
    p.add_argument("--leak", action="store_true", help="forget to stop the consumer at shutdown")
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
