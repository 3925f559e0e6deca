"""A keyed worker pool: one key is always handled in order by one worker.

An envelope's key picks its worker by a stable hash (CRC-32), so per-key order
holds however many keys and publishers there are, while different keys run in
parallel. Each worker has a bounded queue: when it is full, ``submit`` waits
(backpressure) instead of dropping or growing without limit.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from typing import Any, Callable, Protocol

from bus.counters import BusCounters
from bus.deadline import CANCEL_GRACE_S, cancel_and_wait
from bus.envelope import Envelope
from bus.protocol import Handler

log = logging.getLogger("bus.pool")

DEFAULT_WORKERS = 256
DEFAULT_QUEUE_SIZE = 128
# each worker is a task created up front: a million of them takes minutes and gigabytes
MAX_WORKERS = 65_536
MAX_QUEUE_SIZE = 1_000_000


_hashes: dict[str, int] = {}


def key_hash(key: str) -> int:
    """CRC-32 of the key, memoised: the same keys recur on every publish."""
    h = _hashes.get(key)
    if h is None:
        if len(_hashes) > 100_000:  # unbounded key spaces must not grow memory
            _hashes.clear()
        h = _hashes[key] = zlib.crc32(key.encode())
    return h


class Target(Protocol):
    """Where a pooled envelope goes: a live subscription's handler."""

    active: bool
    handler: Handler

    async def settle(self, token: Any, ok: bool) -> None:
        """Called after the handler when the backend gave a token (e.g. to ack)."""


class KeyedWorkerPool:
    """Fixed set of named worker tasks, each draining its own bounded queue."""

    def __init__(
        self,
        counters: BusCounters,
        *,
        workers: int = DEFAULT_WORKERS,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        name: str = "bus.pool",
        on_death: Callable[[asyncio.Task, BaseException | None], None] | None = None,
    ) -> None:
        for option, value, most in (("workers", workers, MAX_WORKERS), ("queue_size", queue_size, MAX_QUEUE_SIZE)):
            if type(value) is not int or not 1 <= value <= most:
                raise ValueError(f"{option} must be an integer from 1 to {most:,}, got {value!r}")
        self._counters = counters
        self._n = workers
        self._queue_size = queue_size
        self._name = name
        self._queues: list[asyncio.Queue[tuple[Target, Envelope, Any]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._seen_errors: set[type[BaseException]] = set()
        self._on_death = on_death
        self._stopping = False

    @property
    def workers(self) -> int:
        return self._n

    @property
    def tasks(self) -> tuple[asyncio.Task[None], ...]:
        return tuple(self._tasks)

    def start(self) -> None:
        """Create the queues and worker tasks on the running loop."""
        if self._tasks:
            return
        self._queues = [asyncio.Queue(self._queue_size) for _ in range(self._n)]
        self._tasks = [
            asyncio.create_task(self._work(q), name=f"{self._name}.worker-{i}")
            for i, q in enumerate(self._queues)
        ]
        for t in self._tasks:
            t.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Task) -> None:
        """A worker only ends when the pool stops it; any other end is a fault, said at once."""
        exc = None if task.cancelled() else task.exception()
        if not self._stopping and self._on_death is not None:
            self._on_death(task, exc)

    def worker_for(self, key: str) -> int:
        """The index of the worker that owns ``key`` (stable across runs)."""
        return key_hash(key) % self._n

    def pending(self) -> int:
        """Envelopes queued and not yet taken by a worker."""
        return sum(q.qsize() for q in self._queues)

    def offer(self, target: Target, envelope: Envelope, token: Any = None) -> bool:
        """Queue without waiting; False when the key's queue is full (then await ``submit``)."""
        key = envelope[0]
        h = _hashes.get(key)
        queue = self._queues[(h if h is not None else key_hash(key)) % self._n]
        if queue.full():
            return False
        queue.put_nowait((target, envelope, token))
        return True

    async def submit(self, target: Target, envelope: Envelope, token: Any = None) -> None:
        """Queue ``envelope`` for ``target`` on its key's worker; wait while that queue is full."""
        queue = self._queues[key_hash(envelope.key) % self._n]
        if queue.full():
            await queue.put((target, envelope, token))
        else:
            queue.put_nowait((target, envelope, token))

    async def _work(self, queue: asyncio.Queue[tuple[Target, Envelope, Any]]) -> None:
        counters = self._counters
        while True:
            target, envelope, token = await queue.get()
            try:
                if not target.active:
                    continue
                ok = True
                counters.delivered += 1
                counters.bytes_in += len(envelope.payload)
                try:
                    await target.handler(envelope)
                except Exception as exc:  # a handler's bug must not kill the worker
                    ok = False
                    counters.handler_errors += 1
                    if type(exc) not in self._seen_errors:
                        self._seen_errors.add(type(exc))
                        log.error("handler raised %s (logged once per kind)", type(exc).__name__,
                                  exc_info=exc)
                if token is not None:
                    try:
                        await target.settle(token, ok)
                    except Exception as exc:  # an ack that fails must not kill the worker either
                        counters.handler_errors += 1
                        log.debug("settling a delivery failed: %r", exc)
            finally:
                queue.task_done()

    async def drain(self, timeout: float) -> bool:
        """Wait until every queued envelope has been handled; False if ``timeout`` passed first."""
        if not self._queues:
            return True
        try:
            async with asyncio.timeout(timeout):
                for q in self._queues:
                    await q.join()
        except TimeoutError:
            return False
        return True

    async def stop(self, grace: float = CANCEL_GRACE_S) -> list[asyncio.Task]:
        """Cancel the workers and wait until every one has exited; return those that did not
        within ``grace`` (a handler that ignores cancellation)."""
        self._stopping = True
        refused = await cancel_and_wait(self._tasks, grace)
        self._tasks = []
        return refused
