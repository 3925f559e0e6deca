"""Buses written to misbehave, each in one way, so every verdict class is proven with real code.

They wrap the real memory bus (so they carry load like any other) and add one
fault. Timed behaviour uses ``loop.call_later`` on an event: the lingering is
what is under test, not a way of waiting.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from busmon.bus import Envelope, Handler
from busmon.bus.memory import MemoryBus

# threads the tests must release afterwards, so one test's leak does not outlive it
STUCK_THREADS: list[tuple[threading.Thread, threading.Event]] = []


class Wrapped:
    """Delegates the bus interface to a real MemoryBus."""

    def __init__(self, **options: Any) -> None:
        self.inner = MemoryBus(**options)
        self.counters = self.inner.counters

    async def start(self) -> None:
        await self.inner.start()

    async def publish(self, topic: str, envelope: Envelope) -> None:
        await self.inner.publish(topic, envelope)

    async def subscribe(self, topic: str, handler: Handler, *, group: str | None = None):
        return await self.inner.subscribe(topic, handler, group=group)

    async def close(self) -> None:
        await self.inner.close()


async def _forever() -> None:
    await asyncio.Event().wait()


# what a library keeps in a module-level registry outlives the bus object, as real leaks do
REGISTRY: list[Any] = []


class TaskLeaker(Wrapped):
    """Starts a background task, registers it globally, and never stops it."""

    async def start(self) -> None:
        await super().start()
        REGISTRY.append(asyncio.create_task(_forever(), name="bus.leaky.heartbeat"))


class ThreadLeaker(Wrapped):
    """Starts a thread and never stops it."""

    async def start(self) -> None:
        await super().start()
        release = threading.Event()
        thread = threading.Thread(target=release.wait, name="leaky-poller", daemon=True)
        thread.start()
        STUCK_THREADS.append((thread, release))


async def _linger(done: asyncio.Event) -> None:
    await done.wait()


class SlowExit(Wrapped):
    """close() returns at once; its flusher task exits ``linger_ms`` later."""

    def __init__(self, linger_ms: float = 300, **options: Any) -> None:
        super().__init__(**options)
        self.linger_ms = linger_ms

    async def start(self) -> None:
        await super().start()
        self.done = asyncio.Event()
        self.task = asyncio.create_task(_linger(self.done), name="bus.slow.flusher")

    async def close(self) -> None:
        await super().close()
        asyncio.get_running_loop().call_later(self.linger_ms / 1000, self.done.set)


async def _worker_with_slow_cleanup(cleanup_ms: float) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        # a cleanup that takes a while, as a real client's shutdown does
        finished = asyncio.Event()
        asyncio.get_running_loop().call_later(cleanup_ms / 1000, finished.set)
        await finished.wait()
        raise


class CancelWithoutAwait(Wrapped):
    """close() cancels its workers but does not await them (as many clients do)."""

    def __init__(self, workers_: int = 3, cleanup_ms: float = 80, **options: Any) -> None:
        super().__init__(**options)
        self.n, self.cleanup_ms = workers_, cleanup_ms

    async def start(self) -> None:
        await super().start()
        self.tasks = [asyncio.create_task(_worker_with_slow_cleanup(self.cleanup_ms),
                                          name=f"bus.sloppy.worker-{i}") for i in range(self.n)]

    async def close(self) -> None:
        await super().close()
        for t in self.tasks:
            t.cancel()  # and returns without awaiting


SHARED_NAME = "shared.heartbeat"


def start_shared_heartbeat() -> asyncio.Task:
    """A long-lived task that exists before the run (so it is in the baseline)."""
    return asyncio.create_task(_forever(), name=SHARED_NAME)


class Replacer(Wrapped):
    """Stops the shared heartbeat on start and, on close, starts a new one in its place:
    the count after close equals the baseline, but the task is a different object."""

    async def start(self) -> None:
        await super().start()
        for t in asyncio.all_tasks():
            if t.get_name() == SHARED_NAME:
                t.cancel()
                await asyncio.wait([t])

    async def close(self) -> None:
        await super().close()
        self.replacement = start_shared_heartbeat()  # held: a leak, not an abandoned task


class ExecutorUser(Wrapped):
    """Resolves a host name in start(): asyncio's default executor starts a thread that
    lives until the loop shuts down. Runtime-owned, so ignored, and labelled."""

    async def start(self) -> None:
        await super().start()
        await asyncio.get_running_loop().getaddrinfo("localhost", 80)


class NatsNeverClosed:
    """A real nats-py client used wrongly: the connection is never closed."""

    def __init__(self, servers: str) -> None:
        self.servers = servers
        self.counters = None

    async def start(self) -> None:
        import nats

        self.nc = await nats.connect(self.servers)

    async def publish(self, topic: str, envelope: Envelope) -> None:
        from busmon.bus import encode

        await self.nc.publish(topic, encode(envelope))

    async def subscribe(self, topic: str, handler: Handler, *, group: str | None = None):
        from busmon.bus import decode

        async def cb(msg) -> None:
            await handler(decode(msg.data))

        sub = await self.nc.subscribe(topic, queue=group or "", cb=cb)
        await self.nc.flush()
        return sub

    async def close(self) -> None:
        await self.nc.flush()  # ...and forgets nc.close()


# -- buses that get stuck: each call into them must be bounded by busmon's deadlines ------------

class StuckStart(Wrapped):
    """start() never returns (a connect that hangs)."""

    async def start(self) -> None:
        await super().start()
        await _forever()


class StuckSubscribe(Wrapped):
    """subscribe() never returns (a group join that never completes)."""

    async def subscribe(self, topic: str, handler: Handler, *, group: str | None = None):
        await _forever()


class StuckPublish(Wrapped):
    """publish() blocks forever after ``after`` envelopes (a broker that stopped taking them)."""

    def __init__(self, after: int = 100, **options: Any) -> None:
        super().__init__(**options)
        self.after, self.sent = after, 0

    async def publish(self, topic: str, envelope: Envelope) -> None:
        self.sent += 1
        if self.sent > self.after:
            await _forever()
        await super().publish(topic, envelope)


class StuckClose(Wrapped):
    """close() closes the real bus, then waits forever on something that never happens."""

    async def close(self) -> None:
        await super().close()
        await _flush_that_never_ends()


async def _flush_that_never_ends() -> None:
    await asyncio.Event().wait()


async def _refuse_cancellation() -> None:
    """Swallows every cancellation: only the process ending stops it."""
    while True:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            continue


class StubbornClose(Wrapped):
    """close() that ignores its cancellation: busmon must abandon it, say so, and still exit."""

    async def close(self) -> None:
        await super().close()
        await _refuse_cancellation()


class StubbornLeak(Wrapped):
    """Leaves a task that ignores cancellation: leaked, and busmon must still exit."""

    async def start(self) -> None:
        await super().start()
        self.task = asyncio.create_task(_refuse_cancellation(), name="bus.stubborn.pinger")


class NonDaemonThreadLeak(Wrapped):
    """Leaves a non-daemon thread blocked forever: it would keep the interpreter from exiting."""

    async def start(self) -> None:
        await super().start()
        threading.Thread(target=threading.Event().wait, name="stubborn-poller", daemon=False).start()


# blocking jobs the tests release afterwards: a worker stuck at exit would hang the interpreter
STUCK_JOBS: list[threading.Event] = []


class StuckExecutorJob(Wrapped):
    """Submits a blocking job to the loop's default executor that never finishes (on its own)."""

    async def start(self) -> None:
        await super().start()
        release = threading.Event()
        STUCK_JOBS.append(release)
        asyncio.get_running_loop().run_in_executor(None, release.wait)


class DyingWorker(Wrapped):
    """One of the pool's workers is cancelled by someone else mid-load: a bus fault, which must
    end the load phase at once rather than when its deadline passes."""

    def __init__(self, after: int = 50, **options: Any) -> None:
        super().__init__(**options)
        self.after, self.seen = after, 0
        self.faulted = self.inner.faulted

    @property
    def fault(self):
        return self.inner.fault

    async def subscribe(self, topic: str, handler: Handler, *, group: str | None = None):
        async def counting(envelope: Envelope) -> None:
            self.seen += 1
            if self.seen == self.after:
                self.inner.pool.tasks[-1].cancel()
            await handler(envelope)

        return await super().subscribe(topic, counting, group=group)


class Announcer(Wrapped):
    """A well-behaved bus that says on stdout when its first envelope is published, so a test
    can act mid-load on an event rather than after a guessed delay."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.announced = False

    async def publish(self, topic: str, envelope: Envelope) -> None:
        if not self.announced:
            self.announced = True
            print("busmon-test: publishing", flush=True)
        await super().publish(topic, envelope)


# -- buses whose leftovers appear after close, or hide from a naive look ---------------------------

async def _late_worker() -> None:
    await asyncio.Event().wait()


class LateTask(Wrapped):
    """close() returns clean, but leaves a timer that starts a task 200 ms later (a 'reconnect')."""

    async def close(self) -> None:
        await super().close()
        asyncio.get_running_loop().call_later(0.2, self._reconnect)

    def _reconnect(self) -> None:
        REGISTRY.append(asyncio.get_running_loop().create_task(_late_worker(), name="bus.late.reconnect"))


class LateThread(Wrapped):
    """close() leaves a timer that starts a thread 200 ms later."""

    async def close(self) -> None:
        await super().close()
        asyncio.get_running_loop().call_later(0.2, self._spawn)

    def _spawn(self) -> None:
        release = threading.Event()
        thread = threading.Thread(target=release.wait, name="late-poller", daemon=True)
        thread.start()
        STUCK_THREADS.append((thread, release))


class PendingTimer(Wrapped):
    """close() leaves a timer due in 60 s: it has not fired by the settle deadline."""

    async def close(self) -> None:
        await super().close()
        REGISTRY.append(asyncio.get_running_loop().call_later(60, self._retry))

    def _retry(self) -> None:
        """Would reconnect, long after the bus was closed."""


class AbandonedTask(Wrapped):
    """start() starts a task that waits forever on a future nothing else holds: a real bug, which
    asyncio reports as 'Task was destroyed but it is pending!' once the GC finds it."""

    async def start(self) -> None:
        await super().start()
        asyncio.get_running_loop().create_task(_wait_for_nothing(), name="bus.abandoned.waiter")


async def _wait_for_nothing() -> None:
    await asyncio.get_running_loop().create_future()


class ExitsThenCollected(Wrapped):
    """close() leaves a task that finishes a moment later and is then collected: exited."""

    async def close(self) -> None:
        await super().close()
        asyncio.get_running_loop().create_task(_finish_soon(), name="bus.brief.flush")


async def _finish_soon() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


class ForeignThread(Wrapped):
    """A thread started outside threading (as a C library would) that touches threading, then
    ends: Python keeps a _DummyThread for it whose is_alive() is always true on 3.11."""

    async def start(self) -> None:
        await super().start()
        import _thread

        done = threading.Event()

        def body() -> None:
            threading.current_thread()  # registers a _DummyThread
            done.set()

        _thread.start_new_thread(body, ())
        await asyncio.get_running_loop().run_in_executor(None, done.wait)


def make_bus_with_url(url: str, **options: Any) -> Wrapped:
    """A factory whose own option is called ``url``, as many are."""
    bus = Wrapped(**options)
    bus.url = url
    return bus


class WrappedCreateLeaker(Wrapped):
    """Starts its leaked task through a library's create_task helper (aiokafka's), as client
    libraries do: the creation site must be this bus's line, not the helper's."""

    async def start(self) -> None:
        from aiokafka.util import create_task

        await super().start()
        REGISTRY.append(create_task(_forever()))


# -- resources other than tasks and threads (issue 9) ------------------------------------

# child processes the tests must end afterwards (each waits on its stdin, so it also ends
# by itself when this process exits and the pipe closes)
STUCK_PROCESSES: list[Any] = []


class SocketKeeper(Wrapped):
    """Opens a TCP connection to ``peer`` (host:port) at start and keeps it open after close:
    the transport sits in a module-level registry, so the GC cannot close it either."""

    def __init__(self, peer: str = "", **options: Any) -> None:
        super().__init__(**options)
        self.peer = peer

    async def start(self) -> None:
        await super().start()
        host, _, port = self.peer.rpartition(":")
        _, writer = await asyncio.open_connection(host, int(port))
        REGISTRY.append(writer)


class ChildLeaker(Wrapped):
    """Starts a helper process at start and never stops it (it waits on its stdin)."""

    async def start(self) -> None:
        import sys

        await super().start()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; sys.stdin.buffer.read()", stdin=asyncio.subprocess.PIPE)
        STUCK_PROCESSES.append(proc)


class LoopBlocker(Wrapped):
    """Its handler calls ``time.sleep`` (a blocking call) for ``block_ms`` every ``every``
    envelopes, on the event loop."""

    def __init__(self, block_ms: float = 250, every: int = 500, **options: Any) -> None:
        super().__init__(**options)
        self.block_s = block_ms / 1000
        self.every = every
        self.seen = 0

    async def subscribe(self, topic: str, handler: Handler, *, group: str | None = None):
        async def blocking(envelope: Envelope) -> None:
            self.seen += 1
            if self.seen % self.every == 0:
                _block(self.block_s)
            await handler(envelope)

        return await super().subscribe(topic, blocking, group=group)


def _block(seconds: float) -> None:
    import time

    time.sleep(seconds)  # the blocking call under test


class Hoarder(Wrapped):
    """Keeps every envelope it ever published in a list (an outbox never pruned)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.sent: list[Envelope] = []

    async def publish(self, topic: str, envelope: Envelope) -> None:
        self.sent.append(envelope)
        await super().publish(topic, envelope)


#: the groups GroupRecorder buses were asked to subscribe with, in order
GROUPS_SEEN: list[str | None] = []


class GroupRecorder(Wrapped):
    """Notes the consumer group of every subscription (a well-behaved bus otherwise)."""

    async def subscribe(self, topic: str, handler: Handler, *, group: str | None = None):
        GROUPS_SEEN.append(group)
        return await super().subscribe(topic, handler, group=group)


class LazyImporter(Wrapped):
    """Imports a module the first time it closes (freshly each run), as FastStream's stop()
    first uses anyio's asyncio backend: a one-time import, not memory that grows with the
    envelopes."""

    async def start(self) -> None:
        import sys

        sys.modules.pop("tests.lazy_heavy_module", None)
        await super().start()

    async def close(self) -> None:
        import importlib

        importlib.import_module("tests.lazy_heavy_module")
        await super().close()


class FailsThenStuckClose(StuckClose):
    """Publishing fails (the broker is gone), and then close() hangs as well."""

    async def publish(self, topic: str, envelope: Envelope) -> None:
        raise ConnectionError("the broker went away")


class SecretInTaskName(Wrapped):
    """A library that names its connection task after its credentials (a real mistake): the
    password reaches busmon's events as a leftover's name, and must never reach what it writes."""

    def __init__(self, password: str = "", **options: Any) -> None:
        super().__init__(**options)
        self.password = password

    async def start(self) -> None:
        await super().start()
        REGISTRY.append(asyncio.create_task(_forever(), name=f"bus.leaky.conn:{self.password}"))
