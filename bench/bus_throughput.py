"""End-to-end throughput and latency of each bus backend against its raw client, in one run.

Run by hand from the repository root (it starts its own Tansu and nats-server on
loopback ports and stops them)::

    python -m bench.bus_throughput [--json bench/results/bus_throughput.json] [--repeat 3]

"End to end" is from the first publish until the handler has seen every
envelope. Both sides build each ``Envelope`` inside the timed loop (as an
application does), so the raw ceiling carries the same objects as the bus. Latency is handler time minus the publish timestamp (same process,
monotonic clock). Each pair runs interleaved (raw, bus, raw, bus, ...) ``--repeat`` times; the best run of each is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time
import uuid
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.results_file import write_results
from bus import Envelope, create_bus

KEYS = 100
PAYLOAD = b"x" * 256
TS = struct.Struct(">Q")


@dataclass
class Result:
    case: str
    messages: int
    seconds: float
    per_s: float
    p50_ms: float
    p99_ms: float


def summarize(case: str, n: int, seconds: float, lat_ns: list[int]) -> Result:
    lat_ns.sort()
    pct = lambda q: lat_ns[min(len(lat_ns) - 1, int(q * len(lat_ns)))] / 1e6  # noqa: E731
    return Result(case, n, round(seconds, 4), round(n / seconds, 1), round(pct(0.50), 3), round(pct(0.99), 3))


class Sink:
    """Counts deliveries, records latency, and signals when all have arrived."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.lat: list[int] = []
        self.done = asyncio.Event()

    def hit(self, ts_ns: int) -> None:
        self.lat.append(time.monotonic_ns() - ts_ns)
        if len(self.lat) >= self.n:
            self.done.set()


KEY_NAMES = [f"k{i}" for i in range(KEYS)]


def make(i: int) -> Envelope:
    """Each publisher builds its envelope as it goes, as an application would."""
    return Envelope(key=KEY_NAMES[i % KEYS], type="bench", payload=PAYLOAD)


# -- the bus, any backend --------------------------------------------------------

async def run_bus(case: str, url: str, n: int, **options) -> Result:
    bus = create_bus(url, **options)
    await bus.start()
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    sink = Sink(n)

    async def handler(e: Envelope) -> None:
        sink.hit(e.ts_ns)

    try:
        await bus.subscribe(topic, handler)
        t0 = time.perf_counter()
        for i in range(n):
            await bus.publish(topic, make(i))
        await asyncio.wait_for(sink.done.wait(), 120)
        elapsed = time.perf_counter() - t0
    finally:
        await bus.close()
    return summarize(case, n, elapsed, sink.lat)


# -- raw ceilings ----------------------------------------------------------------

async def run_raw_queue(n: int, workers: int = 256, queue_size: int = 128) -> Result:
    """asyncio.Queue fan-out to keyed workers: the in-process ceiling."""
    sink = Sink(n)
    queues = [asyncio.Queue(queue_size) for _ in range(workers)]

    async def work(q: asyncio.Queue) -> None:
        while True:
            e, ts = await q.get()
            sink.hit(ts)
            q.task_done()

    tasks = [asyncio.create_task(work(q)) for q in queues]
    t0 = time.perf_counter()
    for i in range(n):
        e = make(i)
        await queues[zlib.crc32(e.key.encode()) % workers].put((e, time.monotonic_ns()))
    await sink.done.wait()
    elapsed = time.perf_counter() - t0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return summarize("raw asyncio.Queue x256", n, elapsed, sink.lat)


async def run_raw_kafka(bootstrap: str, n: int) -> Result:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    topic = f"raw-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 4, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=65536)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="latest", fetch_max_wait_ms=20)
    await producer.start()
    await consumer.start()
    sink = Sink(n)
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        for tp in tps:
            await consumer.position(tp)

        async def consume() -> None:
            while not sink.done.is_set():
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for r in records:
                        sink.hit(TS.unpack_from(r.value)[0])

        reader = asyncio.create_task(consume())
        keys = [f"k{i % KEYS}".encode() for i in range(n)]
        t0 = time.perf_counter()
        for k in keys:
            await producer.send(topic, TS.pack(time.monotonic_ns()) + PAYLOAD, key=k)
        await asyncio.wait_for(sink.done.wait(), 120)
        elapsed = time.perf_counter() - t0
        await reader
    finally:
        await consumer.stop()
        await producer.stop()
    return summarize("raw aiokafka", n, elapsed, sink.lat)


async def run_raw_nats(url: str, n: int) -> Result:
    import nats

    nc = await nats.connect(url)
    sink = Sink(n)
    subject = f"raw-{uuid.uuid4().hex[:8]}"

    async def cb(msg) -> None:
        sink.hit(TS.unpack_from(msg.data)[0])

    try:
        await nc.subscribe(subject, cb=cb, pending_msgs_limit=1 << 20, pending_bytes_limit=256 << 20)
        await nc.flush()
        t0 = time.perf_counter()
        for _ in range(n):
            await nc.publish(subject, TS.pack(time.monotonic_ns()) + PAYLOAD)
        await asyncio.wait_for(sink.done.wait(), 120)
        elapsed = time.perf_counter() - t0
    finally:
        await nc.close()
    return summarize("raw nats-py", n, elapsed, sink.lat)


async def run_raw_jetstream(url: str, n: int) -> Result:
    import nats
    from nats.js import api

    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=4000)
    subject = f"raw-{uuid.uuid4().hex[:8]}"
    stream = subject.upper().replace("-", "_")
    await js.add_stream(name=stream, subjects=[subject], storage=api.StorageType.MEMORY)
    psub = await js.pull_subscribe(subject, stream=stream, config=api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.NEW, ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=1024))
    sink = Sink(n)

    async def consume() -> None:
        while not sink.done.is_set():
            try:
                msgs = await psub.fetch(256, timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            for m in msgs:
                sink.hit(TS.unpack_from(m.data)[0])
                await m.ack()

    try:
        reader = asyncio.create_task(consume())
        t0 = time.perf_counter()
        for _ in range(n):
            await js.publish_async(subject, TS.pack(time.monotonic_ns()) + PAYLOAD)
        await asyncio.wait_for(sink.done.wait(), 120)
        elapsed = time.perf_counter() - t0
        await reader
    finally:
        await nc.close()
    return summarize("raw nats-py JetStream", n, elapsed, sink.lat)


# -- driver ----------------------------------------------------------------------

async def main(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.brokers import nats_server, tansu

    pairs: list[tuple[str, Result, Result, float]] = []
    r = args.repeat

    async def pair(name: str, bus_make, raw_make, target: float) -> None:
        raws, buses = [], []
        for _ in range(r):  # interleaved, so drift in machine load hits both sides alike
            raws.append(await raw_make())
            buses.append(await bus_make())
        raw = max(raws, key=lambda x: x.per_s)
        ours = max(buses, key=lambda x: x.per_s)
        pairs.append((name, ours, raw, target))
        print(f"  {name}: bus {ours.per_s:,.0f}/s vs raw {raw.per_s:,.0f}/s", flush=True)

    n = args.messages
    want = set(args.only.split(",")) if args.only else {"memory", "nats", "nats+js", "kafka"}
    if "memory" in want:
        await pair("memory", lambda: run_bus("bus memory (256 workers)", "memory://", n["memory"]),
                   lambda: run_raw_queue(n["memory"]), 0.6)
    if want & {"nats", "nats+js"}:
        with nats_server() as broker:
            js_url = broker.url.replace("nats://", "nats+js://")
            if "nats" in want:
                await pair("nats", lambda: run_bus("bus nats", broker.url, n["nats"]),
                           lambda: run_raw_nats(broker.url, n["nats"]), 0.85)
            if "nats+js" in want:
                await pair("nats+js", lambda: run_bus("bus nats+js", js_url, n["nats+js"], storage="memory"),
                           lambda: run_raw_jetstream(broker.url, n["nats+js"]), 0.85)
    if "kafka" in want:
        with tansu() as broker:
            bootstrap = broker.url.split("://", 1)[1]
            await pair("kafka", lambda: run_bus("bus kafka", broker.url, n["kafka"]),
                       lambda: run_raw_kafka(bootstrap, n["kafka"]), 0.85)

    from rich.console import Console
    from rich.table import Table

    table = Table(title="busmon bus throughput, end to end (best of %d)" % r)
    for col in ("backend", "bus msg/s", "raw msg/s", "ratio", "target", "bus p50/p99 ms", "raw p50/p99 ms"):
        table.add_column(col, justify="right" if col != "backend" else "left")
    rows = []
    for name, ours, raw, target in pairs:
        ratio = ours.per_s / raw.per_s
        table.add_row(name, f"{ours.per_s:,.0f}", f"{raw.per_s:,.0f}", f"{ratio:.2f}",
                      f">= {target}", f"{ours.p50_ms:.2f} / {ours.p99_ms:.2f}",
                      f"{raw.p50_ms:.2f} / {raw.p99_ms:.2f}")
        rows.append({"backend": name, "bus": asdict(ours), "raw": asdict(raw),
                     "ratio": round(ratio, 3), "target": target, "met": ratio >= target})
    Console().print(table)
    return {
        "repeat": r, "payload_bytes": len(PAYLOAD), "keys": KEYS, "results": rows,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("bench/results/bus_throughput.json"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated: memory,nats,nats+js,kafka")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    a = parser.parse_args()
    base = {"memory": 200_000, "nats": 100_000, "nats+js": 50_000, "kafka": 50_000}
    a.messages = {k: int(v * a.scale) for k, v in base.items()}
    out = asyncio.run(main(a))
    write_results(a.json, out)
