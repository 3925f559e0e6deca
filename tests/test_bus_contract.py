"""The contract every backend keeps, run against memory and real Kafka and NATS brokers."""

from __future__ import annotations

import asyncio
import time
import zlib

import pytest

from busmon.bus import BusClosedError, BusConnectError, Envelope, create_bus
from tests.brokers import free_port
from tests.conftest import backend_options
from tests.helpers import (Collector, assert_in_order_no_loss, assert_nothing_left, check_handler_errors_are_counted,
                           check_unsubscribe_stops_delivery, live_tasks, live_threads, publish_many)

N = 1000
KEYS = 50


async def test_per_key_order_many_keys_several_subscribers(bus, topic):
    subs = [Collector(f"sub{i}") for i in range(3)]
    for c in subs:
        await bus.subscribe(topic, c)
    await publish_many(bus, topic, N, KEYS)
    for c in subs:
        await c.wait_for(N)
    for c in subs:
        assert_in_order_no_loss(c, N, KEYS)
    assert bus.counters.published == N
    assert bus.counters.delivered == 3 * N


async def test_per_key_order_when_handlers_suspend_sometimes(bus, topic):
    """Handlers that finish at once run eagerly, those that suspend are finished by their worker,
    batches are handed over whole: each key still in order, never two at once."""
    active: set[str] = set()
    c = Collector("mixed")

    async def handler(e: Envelope) -> None:
        assert e.key not in active, f"{e.key} handled twice at once"
        active.add(e.key)
        for _ in range(zlib.crc32(f"{e.key}/{e.seq}".encode()) % 4 // 2):  # 0 or 1 suspensions
            await asyncio.sleep(0)
        active.discard(e.key)
        await c(e)

    await bus.subscribe(topic, handler)
    await publish_many(bus, topic, N, KEYS)
    await c.wait_for(N)
    assert_in_order_no_loss(c, N, KEYS)


async def test_once_per_group(bus, topic, backend):
    group, h = Collector("group g"), Collector("group h")
    members: dict[int, list[Envelope]] = {1: [], 2: []}

    def member(i: int):
        async def handle(e: Envelope) -> None:
            members[i].append(e)
            await group(e)
        return handle

    await bus.subscribe(topic, member(1), group="g")
    await bus.subscribe(topic, member(2), group="g")
    await bus.subscribe(topic, h, group="h")
    await publish_many(bus, topic, N, KEYS)
    await h.wait_for(N)
    await group.wait_for(N)
    seen = [(e.key, e.seq) for e in group.received]
    assert len(seen) == N and len(set(seen)) == N, "each envelope once within the group"
    assert_in_order_no_loss(h, N, KEYS)
    if backend in ("memory", "kafka"):  # these route a key to one member, so order holds per member
        for i, got in members.items():
            assert got, f"member {i} got nothing"
            by_key: dict[str, list[int]] = {}
            for e in got:
                by_key.setdefault(e.key, []).append(e.seq)
            assert all(seqs == sorted(seqs) for seqs in by_key.values()), f"member {i} out of order"


async def test_handler_errors_are_counted_and_workers_go_on(bus, topic):
    # the 20 failures were handled before the last successes of their keys
    await check_handler_errors_are_counted(bus, topic, 200)


async def test_backpressure_bounds_what_the_bus_holds(url, backend, topic):
    queue_size = 8
    bus = create_bus(url, workers=4, queue_size=queue_size, **backend_options(backend))
    await bus.start()
    try:
        gate = asyncio.Event()
        done = Collector("slow")
        max_pending = 0

        async def slow(e: Envelope) -> None:
            await gate.wait()
            await done(e)

        await bus.subscribe(topic, slow)
        publisher = asyncio.create_task(publish_many(bus, topic, 300, keys=1))
        # wait until the one worker for the one key is blocked and its queue is full
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while bus.pool.pending() < queue_size:
            assert loop.time() < deadline, f"queue never filled ({bus.pool.pending()})"
            if backend == "memory":
                assert not publisher.done()
            await asyncio.wait([publisher], timeout=0.01)
        for _ in range(50):  # let everything else run; nothing may grow past the bound
            max_pending = max(max_pending, bus.pool.pending())
            await asyncio.sleep(0)
        assert max_pending <= queue_size
        if backend == "memory":  # in process, publish itself waits
            assert not publisher.done()
        gate.set()
        await publisher
        await done.wait_for(300)
        assert [e.seq for e in done.received] == list(range(1, 301))
    finally:
        await bus.close()


async def test_unsubscribe_stops_delivery(bus, topic):
    await check_unsubscribe_stops_delivery(bus, topic)


async def test_close_leaves_nothing_it_started(url, backend, topic):
    tasks_before, threads_before = live_tasks(), live_threads()
    bus = create_bus(url, **backend_options(backend))
    await bus.start()
    c = Collector()
    await bus.subscribe(topic, c)
    await bus.subscribe(topic, Collector(), group="grp")
    await publish_many(bus, topic, 100, keys=5)
    await c.wait_for(100)
    await bus.close()
    assert_nothing_left(tasks_before, threads_before)


async def test_close_is_idempotent_and_concurrent_safe(bus, topic):
    await bus.subscribe(topic, Collector())
    await asyncio.gather(bus.close(), bus.close())
    await bus.close()
    with pytest.raises(BusClosedError, match=r"^publish\(\) on .*, a bus that is closed: a closed bus stays closed"):
        await bus.publish(topic, Envelope(key="k", type="t", payload=b""))
    with pytest.raises(BusClosedError, match=r"^subscribe\(\) on .*, a bus that is closed"):
        await bus.subscribe(topic, Collector())


@pytest.mark.parametrize("scheme", ["kafka", "nats", "nats+js"])
async def test_unreachable_broker_fails_fast_and_cleanly(scheme):
    port = free_port()  # nothing listens here
    tasks_before = live_tasks()
    bus = create_bus(f"{scheme}://127.0.0.1:{port}", connect_timeout=2.0)
    started = time.monotonic()
    with pytest.raises(BusConnectError) as info:
        await bus.start()
    elapsed = time.monotonic() - started
    assert elapsed < 2.0 + 1.0, f"took {elapsed:.1f} s"
    assert f"127.0.0.1:{port}" in str(info.value)
    await bus.close()  # close after a failed start
    await bus.close()
    assert not (live_tasks() - tasks_before)
