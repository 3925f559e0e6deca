"""The bus's own promises under faults: every call bounded, close bounded by one drain deadline,
a library's CancelledError is a failure, a cancelled close can be retried, refusers are named."""

from __future__ import annotations

import asyncio
import time

import pytest

from busmon.bus import Envelope, create_bus
from busmon.bus.deadline import CallTimeout, LibraryCancelled, bounded, cancel_and_wait
from busmon.bus.errors import BusCloseError
from tests.conftest import backend_options
from tests.leaky_buses import _forever
from tests.leaky_buses import _refuse_cancellation as _refuse


async def test_bounded_names_where_the_call_was_stuck():
    with pytest.raises(CallTimeout) as info:
        await bounded(_forever(), 0.05, "flush()")
    assert "flush() did not return within 0.05 s" in str(info.value)
    assert any("_forever" in line for line in info.value.stack)
    assert info.value.abandoned is None


async def test_bounded_abandons_a_call_that_ignores_cancellation_after_its_grace():
    t0 = time.monotonic()
    with pytest.raises(CallTimeout) as info:
        await bounded(_refuse(), 0.05, "close()", grace=0.1)
    assert time.monotonic() - t0 < 1.0
    assert info.value.abandoned is not None and not info.value.abandoned.done()
    assert "ignored cancellation and was abandoned" in str(info.value)
    info.value.abandoned.get_coro().close()  # end it for the test: nothing else can


async def test_a_library_raising_cancelled_error_is_a_failure_not_an_abort():
    async def stop() -> None:  # what aiokafka's consumer.stop() does (#647)
        raise asyncio.CancelledError

    with pytest.raises(LibraryCancelled):
        await bounded(stop(), 1.0, "consumer.stop()")
    assert not asyncio.current_task().cancelling()


async def test_the_callers_own_cancellation_still_propagates():
    task = asyncio.create_task(bounded(_forever(), 10, "x"))
    await asyncio.sleep(0)  # let it start waiting
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancel_and_wait_names_refusers_within_the_grace():
    ok, bad = asyncio.create_task(_forever()), asyncio.create_task(_refuse(), name="bus.refuser")
    await asyncio.sleep(0)
    refused = await cancel_and_wait([ok, bad], grace=0.1)
    assert refused == [bad] and ok.cancelled()
    bad.get_coro().close()


async def test_close_names_a_task_that_ignores_cancellation_and_still_closes():
    bus = create_bus("memory://", workers=4)
    await bus.start()
    bus.tasks.spawn(_refuse(), name="bus.test.refuser")
    t0 = time.monotonic()
    with pytest.raises(BusCloseError, match="bus.test.refuser"):
        await bus.close()
    assert time.monotonic() - t0 < 2.0
    assert bus.state.value == "closed" and all(t.done() for t in bus.pool.tasks)
    for t in bus.refused:
        t.get_coro().close()


async def test_a_cancelled_close_can_be_awaited_again():
    bus = create_bus("memory://", workers=2, drain_timeout=5)
    await bus.start()
    release = asyncio.Event()

    async def slow(envelope: Envelope) -> None:
        await release.wait()

    await bus.subscribe("t", slow)
    await bus.publish("t", Envelope(key="k", type="x", payload=b""))
    first = asyncio.create_task(bus.close())
    await asyncio.sleep(0)  # close is now draining
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    await asyncio.wait_for(bus.close(), 5)  # the retry completes the same close
    assert bus.state.value == "closed"


@pytest.mark.nats
async def test_close_with_four_blocked_subscriptions_takes_one_drain_deadline(nats_broker):
    url = nats_broker.url.replace("nats://", "nats+js://")
    bus = create_bus(url, drain_timeout=1.0, workers=8, **backend_options("nats+js"))
    await bus.start()
    never = asyncio.Event()
    started = asyncio.Event()

    async def blocked(envelope: Envelope) -> None:
        started.set()
        await never.wait()

    topics = [f"blocked-{i}-{time.monotonic_ns()}" for i in range(4)]
    for topic in topics:
        await bus.subscribe(topic, blocked)
    for topic in topics:
        for i in range(50):
            await bus.publish(topic, Envelope(key=f"k{i}", type="x", payload=b""))
    await asyncio.wait_for(started.wait(), 10)
    t0 = time.monotonic()
    await bus.close()
    took = time.monotonic() - t0
    assert took < 1.0 + 1.5, took  # one drain deadline, not one per subscription (4 × 1 s)
