"""Broker confirmations: failures are counted whether they come before or at close."""

from __future__ import annotations

import asyncio
import logging

from busmon.bus.confirmations import REAP_EVERY, Confirmations
from busmon.bus.counters import BusCounters


async def test_failed_and_cancelled_confirmations_are_counted_as_they_are_reaped(caplog):
    counters = BusCounters()
    confirmations = Confirmations(counters, logging.getLogger("test"), "kafka")
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(REAP_EVERY)]
    futures[0].set_result(None)
    futures[1].set_exception(OSError("broker said no"))
    futures[2].cancel()
    futures[4].set_exception(OSError("after one still waiting"))
    with caplog.at_level(logging.ERROR):
        for future in futures:
            confirmations.add(future)  # the last add reaps: in order, up to the first not done
    assert counters.publish_errors == 2 and len(confirmations) == REAP_EVERY - 3
    assert "broker said no" in caplog.text
    for future in futures[3:]:
        if not future.done():
            future.set_result(None)
    assert await confirmations.wait(1.0) == 0
    assert counters.publish_errors == 3 and len(confirmations) == 0


async def test_confirmations_still_missing_at_close_count_as_failed():
    counters = BusCounters()
    confirmations = Confirmations(counters, logging.getLogger("test"), "kafka")
    loop = asyncio.get_running_loop()
    waiting = loop.create_future()
    confirmations.add(waiting)
    assert await confirmations.wait(0.0) == 1
    assert waiting.cancelled() and counters.publish_errors == 1
