"""Test helpers: collect deliveries and wait for them on events, never on sleeps."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from typing import Callable, TypeVar

from busmon.bus import Envelope

T = TypeVar("T")


def poll(check: Callable[[], T | None], what: str, timeout: float, every: float = 0.0) -> T:
    """``check()`` until it returns something truthy (returned), failing at the deadline: for
    state another process or the kernel holds, which sends no event (``every`` s apart, or at once)."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {last!r})")
        if every:
            time.sleep(every)


class Collector:
    """An async handler that records what it receives and lets tests await a count."""

    def __init__(self, name: str = "collector") -> None:
        self.name = name
        self.received: list[Envelope] = []
        self._waiters: list[tuple[int, asyncio.Event]] = []

    async def __call__(self, envelope: Envelope) -> None:
        self.received.append(envelope)
        n = len(self.received)
        for target, event in self._waiters:
            if n >= target:
                event.set()

    async def wait_for(self, count: int, timeout: float = 30.0) -> None:
        if len(self.received) >= count:
            return
        event = asyncio.Event()
        self._waiters.append((count, event))
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: {len(self.received)} of {count} envelopes within {timeout} s"
            ) from None
        finally:
            self._waiters.remove((count, event))

    def by_key(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = defaultdict(list)
        for e in self.received:
            out[e.key].append(e.seq)
        return out


def live_tasks() -> set[asyncio.Task]:
    return set(asyncio.all_tasks())


def live_threads() -> set[int]:
    return {t.ident for t in threading.enumerate() if t.ident is not None}


async def publish_many(bus, topic: str, n: int, keys: int, payload: bytes = b"x" * 64) -> None:
    for i in range(n):
        await bus.publish(topic, Envelope(key=f"k{i % keys}", type="test", payload=payload))



def assert_in_order_no_loss(c: Collector, n: int, keys: int) -> None:
    """``c`` got all ``n`` envelopes of ``keys`` keys, each key's once and in order."""
    by_key = c.by_key()
    assert len(c.received) == n, f"{c.name}: {len(c.received)} != {n}"
    assert len(by_key) == keys
    for key, seqs in by_key.items():
        assert seqs == list(range(1, len(seqs) + 1)), f"{c.name}: key {key} out of order or doubled"


def assert_nothing_left(tasks_before: set[asyncio.Task], threads_before: set[int]) -> None:
    """No task and no thread alive now that was not alive before (a bus's close)."""
    left = live_tasks() - tasks_before
    assert not left, f"tasks alive after close: {[(t.get_name(), t.get_coro()) for t in left]}"
    assert live_threads() <= threads_before, "threads alive after close"


async def check_unsubscribe_stops_delivery(bus, topic: str) -> None:
    """After ``unsubscribe()`` (twice: idempotent) its handler gets nothing more, while a new
    subscription on the topic gets what follows."""
    first, sentinel = Collector("first"), Collector("sentinel")
    sub = await bus.subscribe(topic, first)
    await publish_many(bus, topic, 10, keys=2)
    await first.wait_for(10)
    await sub.unsubscribe()
    await sub.unsubscribe()  # idempotent
    await bus.subscribe(topic, sentinel)
    await publish_many(bus, topic, 10, keys=2)
    await sentinel.wait_for(10)
    assert len(first.received) == 10


async def check_handler_errors_are_counted(bus, topic: str, n: int) -> None:
    """A handler that raises on every tenth envelope: each failure is counted, and delivery goes
    on to all the others."""
    ok = Collector("ok")

    async def flaky(e: Envelope) -> None:
        if e.seq % 10 == 5:
            raise RuntimeError("boom")
        await ok(e)

    await bus.subscribe(topic, flaky)
    await publish_many(bus, topic, n, keys=2)
    await ok.wait_for(n - n // 10)
    assert bus.counters.handler_errors == n // 10
    assert len(ok.received) == n - n // 10


def busmon_in_a_terminal(args: list[str], width: int = 100, deadline_s: float = 60.0) -> tuple[int | None, bytes]:
    """``busmon ARGS`` with a pseudo-terminal ``width`` columns wide for stdin, stdout and stderr,
    as a person types it: rich's live display then redirects sys.stdout/stderr, which a pipe
    never shows. The exit code, or None when still running at the deadline (then killed), and
    all it wrote."""
    import os
    import pty
    import select
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "busmon", *args], cwd=root, stdin=slave, stdout=slave,
                            stderr=slave, close_fds=True,
                            env={**os.environ, "PYTHONPATH": str(root), "COLUMNS": str(width), "LINES": "30"})
    os.close(slave)
    out, end = b"", time.monotonic() + deadline_s
    try:
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.2)  # wakes on output or to look again
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the terminal closed: busmon has ended
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            proc.wait()
            return None, out
        return proc.wait(timeout=10), out
    finally:
        os.close(master)
