"""The keyed worker pool on its own: order, fairness, drain-then-cancel."""

from __future__ import annotations

import asyncio
import random

from busmon.bus import BusCounters, Envelope
from busmon.bus.pool import KeyedWorkerPool
from tests.helpers import live_tasks


class Target:
    def __init__(self, handler) -> None:
        self.active = True
        self.handler = handler

    async def settle(self, token, ok) -> None:
        token.append(ok)


def env(key: str, seq: int) -> Envelope:
    return Envelope(key=key, type="t", payload=b"", seq=seq, ts_ns=1)


async def test_worker_names_and_stable_key_mapping():
    pool = KeyedWorkerPool(BusCounters(), workers=8)
    pool.start()
    try:
        assert [t.get_name() for t in pool.tasks] == [f"bus.pool.worker-{i}" for i in range(8)]
        assert pool.worker_for("order-17") == pool.worker_for("order-17")
        assert len({pool.worker_for(f"k{i}") for i in range(200)}) == 8
    finally:
        await pool.stop()


async def test_order_per_key_under_concurrent_publishers_and_jittery_handlers():
    seen: dict[str, list[int]] = {}
    done = asyncio.Event()
    total = 20 * 100
    rng = random.Random(7)

    async def handler(e: Envelope) -> None:
        for _ in range(rng.randrange(3)):  # handlers that yield a varying number of times
            await asyncio.sleep(0)
        seen.setdefault(e.key, []).append(e.seq)
        if sum(map(len, seen.values())) == total:
            done.set()

    pool = KeyedWorkerPool(BusCounters(), workers=16, queue_size=4)
    pool.start()
    target = Target(handler)

    async def publisher(keys: list[str]) -> None:
        for seq in range(1, 101):
            for k in keys:
                await pool.submit(target, env(k, seq))

    keys = [f"key-{i}" for i in range(20)]
    await asyncio.gather(*(publisher(keys[i::4]) for i in range(4)))
    async with asyncio.timeout(10):
        await done.wait()
    await pool.stop()
    assert all(seqs == list(range(1, 101)) for seqs in seen.values())
    assert len(seen) == 20


async def test_a_stuck_key_does_not_stop_keys_on_other_workers():
    pool = KeyedWorkerPool(BusCounters(), workers=4, queue_size=2)
    pool.start()
    gate = asyncio.Event()
    handled: list[str] = []
    stuck_key = "stuck"
    others = [k for k in (f"k{i}" for i in range(100)) if pool.worker_for(k) != pool.worker_for(stuck_key)][:30]
    all_others = asyncio.Event()

    async def handler(e: Envelope) -> None:
        if e.key == stuck_key:
            await gate.wait()
        handled.append(e.key)
        if len(handled) == len(others):
            all_others.set()

    target = Target(handler)
    await pool.submit(target, env(stuck_key, 1))
    for k in others:
        await pool.submit(target, env(k, 1))
    async with asyncio.timeout(5):
        await all_others.wait()
    assert stuck_key not in handled
    gate.set()
    assert await pool.drain(5)
    assert handled[-1] == stuck_key
    await pool.stop()


async def test_drain_finishes_in_flight_work_then_stop_awaits_workers():
    counters = BusCounters()
    pool = KeyedWorkerPool(counters, workers=2, queue_size=100)
    before = live_tasks()
    pool.start()
    acks: list[bool] = []
    target = Target(lambda e: asyncio.sleep(0))
    for i in range(150):
        await pool.submit(target, env(f"k{i % 7}", i + 1), acks)
    assert await pool.drain(5)
    assert counters.delivered == 150 and acks == [True] * 150
    await pool.stop()
    assert not (live_tasks() - before)


async def test_drain_deadline_then_cancel_awaits_stuck_handlers():
    pool = KeyedWorkerPool(BusCounters(), workers=2, queue_size=10)
    before = live_tasks()
    pool.start()
    forever = asyncio.Event()
    cancelled: list[str] = []

    async def stuck(e: Envelope) -> None:
        try:
            await forever.wait()
        except asyncio.CancelledError:
            cancelled.append(e.key)
            raise

    target = Target(stuck)
    await pool.submit(target, env("a", 1))
    await pool.submit(target, env("a", 2))
    assert not await pool.drain(0.05)
    assert pool.pending() == 1  # the second waits behind the stuck first
    await pool.stop()
    assert cancelled == ["a"]
    assert not (live_tasks() - before), "stop must await the cancelled workers"


async def test_inactive_target_is_skipped():
    counters = BusCounters()
    pool = KeyedWorkerPool(counters, workers=1)
    pool.start()
    calls: list[Envelope] = []

    async def h(e: Envelope) -> None:
        calls.append(e)

    target = Target(h)
    target.active = False
    await pool.submit(target, env("k", 1))
    assert await pool.drain(1)
    await pool.stop()
    assert calls == [] and counters.delivered == 0
