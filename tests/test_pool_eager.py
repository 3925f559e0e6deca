"""The pool's eager dispatch and batch hand-off keep the pool's guarantees.

A delivery to an idle key runs in the caller's step until its handler first suspends, and
is then finished by the key's worker; a batch is one run per worker. Whatever path an
envelope takes, each key is handled in order, one at a time, in its worker's task and
context, with backpressure and drain as before.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import random
import weakref

import pytest

from busmon.bus import BusClosedError, BusCounters, Envelope, create_bus
from busmon.bus.pool import MAX_EAGER_DEPTH, KeyedWorkerPool
from tests.helpers import Collector, live_tasks
from tests.test_pool import Target, env

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")


async def test_a_handler_that_suspends_sometimes_sees_each_key_in_order_on_every_path():
    """Single offers, batches and continuations mixed, with handlers that suspend at random."""
    rng = random.Random(11)
    active: set[str] = set()  # keys whose handler is running: never two at once
    seen: dict[str, list[int]] = {}
    total = 30 * 60
    done = asyncio.Event()

    async def handler(e: Envelope) -> None:
        assert e.key not in active, f"{e.key} handled twice at once"
        active.add(e.key)
        for _ in range(rng.choice((0, 0, 1, 3))):  # most complete at once, some suspend
            await asyncio.sleep(0)
        active.discard(e.key)
        seen.setdefault(e.key, []).append(e.seq)
        if sum(map(len, seen.values())) == total:
            done.set()

    pool = KeyedWorkerPool(BusCounters(), workers=8, queue_size=4)
    pool.start()
    target = Target(handler)
    keys = [f"key-{i}" for i in range(30)]
    batch: list[Envelope] = []
    for seq in range(1, 61):
        for k in keys:
            e = env(k, seq)
            if seq % 3:  # two thirds go one at a time, a third in batches
                await pool.submit(target, e)
                continue
            batch.append(e)
        for _, e, _ in pool.offer_many(target, batch):
            await pool.submit(target, e)
        batch = []
    async with asyncio.timeout(10):
        await done.wait()
    assert await pool.drain(5)
    await pool.stop()
    assert {k: v for k, v in seen.items()} == {k: list(range(1, 61)) for k in keys}


async def test_a_delivery_runs_as_its_worker_in_its_worker_context_before_and_after_suspending():
    pool = KeyedWorkerPool(BusCounters(), workers=2)
    pool.start()
    caller = asyncio.current_task()
    var.set("caller's")
    seen: list[tuple[str, object, str]] = []
    finished = asyncio.Event()

    async def handler(e: Envelope) -> None:
        seen.append(("first step", asyncio.current_task(), var.get()))
        var.set(f"set by {e.key}")
        await asyncio.sleep(0)  # suspends: the worker finishes it
        seen.append(("after", asyncio.current_task(), var.get()))
        finished.set()

    pool.offer(Target(handler), env("k", 1))
    assert seen and seen[0][0] == "first step", "an idle key runs at once, in the caller's step"
    assert asyncio.current_task() is caller and var.get() == "caller's", "the caller is untouched"
    async with asyncio.timeout(5):
        await finished.wait()
    worker = pool.tasks[pool.worker_for("k")]
    assert seen[0][1] is worker and seen[1][1] is worker
    assert seen[1][2] == "set by k", "the context is the same before and after the suspension"
    await pool.stop()


async def test_a_timeout_in_a_handler_fires_on_the_worker_not_on_the_caller():
    pool = KeyedWorkerPool(BusCounters(), workers=1)
    pool.start()
    never = asyncio.Event()
    outcome: list[str] = []

    async def handler(e: Envelope) -> None:
        try:
            async with asyncio.timeout(0.01):
                await never.wait()
        except TimeoutError:
            outcome.append("timed out")

    target = Target(handler)
    pool.offer(target, env("k", 1))
    pool.offer(target, env("k", 2))  # queued behind the first
    assert await pool.drain(5)
    assert outcome == ["timed out", "timed out"]
    assert not asyncio.current_task().cancelling(), "the caller was not cancelled"
    assert not pool.tasks[0].done(), "the worker goes on"
    await pool.stop()


async def test_errors_raised_before_and_after_suspending_are_counted_and_nothing_stops():
    counters = BusCounters()
    pool = KeyedWorkerPool(counters, workers=2)
    pool.start()
    ok = Collector("ok")

    async def handler(e: Envelope) -> None:
        if e.seq == 1:
            raise RuntimeError("at once")
        if e.seq == 2:
            raise asyncio.CancelledError()  # raised by the handler itself, nobody cancelled it
        if e.seq == 3:
            await asyncio.sleep(0)
            raise ValueError("after suspending")
        await ok(e)

    target = Target(handler)
    for seq in range(1, 7):
        pool.offer(target, env("k", seq))
    for _, e, _ in pool.offer_many(target, [env("j", 1), env("j", 2), env("j", 3), env("j", 4)]):
        await pool.submit(target, e)
    assert await pool.drain(5)
    assert counters.handler_errors == 6
    assert [(e.key, e.seq) for e in ok.received] == [("k", 4), ("k", 5), ("k", 6), ("j", 4)]
    assert not any(t.done() for t in pool.tasks)
    await pool.stop()


async def test_a_handler_publishing_to_its_own_key_runs_that_delivery_after_it_ends():
    bus = create_bus("memory://")
    await bus.start()
    order: list[str] = []
    done = asyncio.Event()

    async def handler(e: Envelope) -> None:
        order.append(f"start {e.seq}")
        if e.seq < 3:  # the same key, published from inside its own handler
            await bus.publish("t", Envelope(key="k", type="t", payload=b"", seq=e.seq + 1, ts_ns=1))
        if e.seq == 2:
            await asyncio.sleep(0)
        order.append(f"end {e.seq}")
        if e.seq == 3:
            done.set()

    try:
        await bus.subscribe("t", handler)
        await bus.publish("t", Envelope(key="k", type="t", payload=b"", seq=1, ts_ns=1))
        async with asyncio.timeout(5):
            await done.wait()
    finally:
        await bus.close()
    assert order == ["start 1", "end 1", "start 2", "end 2", "start 3", "end 3"]


async def test_handlers_publishing_in_a_chain_are_bounded_in_depth():
    """Each handler publishes the next key: eager runs nest only so deep, then queue."""
    bus = create_bus("memory://", workers=4096)
    await bus.start()
    depths: list[int] = []
    seqs: list[int] = []
    done = asyncio.Event()
    n = 5 * MAX_EAGER_DEPTH

    async def handler(e: Envelope) -> None:
        depths.append(bus.pool._depth)  # eager runs this one is inside of
        seqs.append(e.seq)
        if e.seq < n:
            await bus.publish("t", Envelope(key=f"k{e.seq + 1}", type="t", payload=b"", seq=e.seq + 1, ts_ns=1))
        else:
            done.set()

    try:
        await bus.subscribe("t", handler)
        await bus.publish("t", Envelope(key="k1", type="t", payload=b"", seq=1, ts_ns=1))
        async with asyncio.timeout(5):
            await done.wait()
    finally:
        await bus.close()
    assert seqs == list(range(1, n + 1))
    assert 1 < max(depths) <= MAX_EAGER_DEPTH
    assert bus.pool._depth == 0


async def test_a_batch_fills_lanes_to_their_bound_and_hands_back_the_rest_in_order():
    pool = KeyedWorkerPool(BusCounters(), workers=2, queue_size=3)
    pool.start()
    gate = asyncio.Event()
    got = Collector("got")

    async def handler(e: Envelope) -> None:
        await gate.wait()
        await got(e)

    target = Target(handler)
    batch = [env("k", seq) for seq in range(1, 11)]
    left = pool.offer_many(target, batch)
    # three run in the eager run (bounded like a queue), three wait in the lane, four come back
    assert [e.seq for _, e, _ in left] == [7, 8, 9, 10]
    assert pool.pending() == 3
    publisher = asyncio.create_task(_submit_all(pool, target, [e for _, e, _ in left]))
    await _waiting_for_room(pool, publisher)  # the rest wait for room
    gate.set()
    await publisher
    await got.wait_for(10)
    assert [e.seq for e in got.received] == list(range(1, 11))
    await pool.stop()


async def _submit_all(pool: KeyedWorkerPool, target: Target, envelopes: list[Envelope]) -> None:
    for e in envelopes:
        await pool.submit(target, e)


async def _waiting_for_room(pool: KeyedWorkerPool, publisher: asyncio.Task, deadline_s: float = 5.0) -> None:
    """Return once ``publisher`` waits for room in one of the pool's lanes (polled, with a
    deadline); fail if it ends first."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not any(lane.room for lane in pool._lanes):
        assert not publisher.done(), "it never waited for room"
        assert loop.time() < end, f"not waiting for room after {deadline_s} s"
        await asyncio.sleep(0)  # a turn of the loop for it to get there
    assert not publisher.done()


async def test_drain_waits_for_a_handler_that_began_eagerly_and_suspended():
    pool = KeyedWorkerPool(BusCounters(), workers=1)
    pool.start()
    release = asyncio.Event()
    finished: list[int] = []

    async def handler(e: Envelope) -> None:
        await release.wait()
        finished.append(e.seq)

    pool.offer(Target(handler), env("k", 1))
    assert not await pool.drain(0.02), "in flight: not drained"
    release.set()
    assert await pool.drain(5)
    assert finished == [1]
    await pool.stop()


async def test_stop_cancels_a_handler_handed_over_before_its_worker_took_it():
    pool = KeyedWorkerPool(BusCounters(), workers=1)
    before = live_tasks()
    pool.start()
    forever = asyncio.Event()
    seen: list[str] = []

    async def handler(e: Envelope) -> None:
        try:
            await forever.wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    pool.offer(Target(handler), env("k", 1))  # suspends at once: handed to the worker
    await pool.stop()  # before the worker ever ran
    assert seen == ["cancelled"]
    assert not (live_tasks() - before)


async def test_a_publisher_waiting_for_room_is_told_when_the_pool_stops():
    pool = KeyedWorkerPool(BusCounters(), workers=1, queue_size=1)
    pool.start()
    forever = asyncio.Event()
    target = Target(lambda e: forever.wait())
    pool.offer(target, env("k", 1))  # in flight
    pool.offer(target, env("k", 2))  # queued: the lane is full
    waiting = asyncio.create_task(pool.submit(target, env("k", 3)))
    await _waiting_for_room(pool, waiting)
    await pool.stop()
    with pytest.raises(BusClosedError):
        await waiting


async def test_a_flat_out_publisher_on_the_memory_bus_still_lets_the_loop_run():
    """Handlers that finish at once run inside publish; the publisher yields now and then."""
    bus = create_bus("memory://")
    await bus.start()
    ticks = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    got = Collector()
    try:
        await bus.subscribe("t", got)
        t = asyncio.create_task(ticker())
        start = ticks
        for i in range(20_000):
            await bus.publish("t", Envelope(key=f"k{i % 10}", type="t", payload=b""))
        during = ticks - start
        stop = True
        await t
    finally:
        await bus.close()
    assert len(got.received) == 20_000
    assert during >= 20_000 // 512 - 1, f"the loop ran {during} times while 20,000 were published"


async def test_a_stopped_pool_keeps_none_of_its_worker_tasks():
    """A cancelled task holds its CancelledError and traceback: a stopped pool must let go."""
    pool = KeyedWorkerPool(BusCounters(), workers=8)
    pool.start()
    pool.offer(Target(lambda e: asyncio.sleep(0)), env("k", 1))
    refs = [weakref.ref(t) for t in pool.tasks]
    await pool.stop()
    gc.collect()
    assert [r for r in refs if r() is not None] == []


async def test_stop_gives_up_on_a_handed_over_handler_that_will_not_stop():
    """Cancelled before its worker took it, a handler that swallows the cancellation and waits
    again is closed; stop() itself returns."""
    pool = KeyedWorkerPool(BusCounters(), workers=1)
    pool.start()
    forever = asyncio.Event()
    seen: list[str] = []

    async def stubborn(e: Envelope) -> None:
        try:
            await forever.wait()
        except asyncio.CancelledError:
            seen.append("cancelled, waits again")
            try:
                await forever.wait()
            finally:
                seen.append("closed")

    pool.offer(Target(stubborn), env("k", 1))
    await pool.stop()
    assert seen == ["cancelled, waits again", "closed"]


@pytest.mark.parametrize("crossed", [False, True])
async def test_handlers_publishing_to_the_same_bus_never_wait_on_themselves(crossed):
    """A burst fills the lanes; each handler publishes onward on the same bus: to its own key
    (its own full lane), or crossed, to the other key, whose handler publishes back. Waiting
    for room would wait for good; handlers' publishes go past the bound instead, and
    everything arrives, in order."""
    bus = create_bus("memory://", workers=2, queue_size=4)
    await bus.start()
    got = Collector("b")
    n = 300
    other = next(k for k in (f"k{i}" for i in range(2, 100)) if bus.pool.worker_for(k) != bus.pool.worker_for("k1"))
    onward = {"k1": other, other: "k1"} if crossed else {"k1": "k1", other: other}

    async def forward(e: Envelope) -> None:
        await asyncio.sleep(0)  # suspends: the burst queues up behind it
        await bus.publish("b", Envelope(key=onward[e.key], type="t", payload=b"", seq=e.seq, ts_ns=1))

    try:
        await bus.subscribe("a", forward)
        await bus.subscribe("b", got)
        for seq in range(1, n + 1):
            for k in ("k1", other):
                await bus.publish("a", Envelope(key=k, type="t", payload=b"", seq=seq, ts_ns=1))
        await got.wait_for(2 * n, timeout=10)
    finally:
        await bus.close()
    assert got.by_key() == {"k1": list(range(1, n + 1)), other: list(range(1, n + 1))}
