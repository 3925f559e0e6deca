"""What every built-in backend shares: lifecycle, stamping, counters, pool, close.

A backend implements ``_connect``, ``_publish``, ``_subscribe`` and
``_disconnect``; this class makes ``start``/``close`` safe to call in any order
and guarantees that when ``close()`` returns, every task the bus started has
exited (awaited, not merely cancelled).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import re
import time
from typing import Any

from busmon.bus.codec import Framer
from busmon.bus.counters import BusCounters
from busmon.bus.envelope import Envelope
from busmon.bus.deadline import CallTimeout, LibraryCancelled, bounded, innermost
from busmon.bus.errors import BusCloseError, BusClosedError, BusConnectError, BusError, BusFault
from busmon.bus.pool import DEFAULT_QUEUE_SIZE, DEFAULT_WORKERS, KeyedWorkerPool
from busmon.bus.protocol import Handler
from busmon.bus.tasks import OwnedTasks

log = logging.getLogger("bus")

DEFAULT_DRAIN_TIMEOUT_S = 5.0
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_CLOSE_TIMEOUT_S = 10.0
DEFAULT_SUBSCRIBE_TIMEOUT_S = 60.0
#: the least time a shutdown call gets even when the close deadline is used up, so
#: every connection is still asked to close
MIN_SHUTDOWN_CALL_S = 0.25
#: how long a timed-out shutdown call may take to exit once cancelled
SHUTDOWN_CANCEL_GRACE_S = 0.25


class State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    STARTED = "started"
    CLOSING = "closing"
    CLOSED = "closed"


_STARTED = State.STARTED  # a module constant: enum member lookup costs on every publish
_new = tuple.__new__
_monotonic_ns = time.monotonic_ns


class BaseSubscription:
    """A live subscription: a handler fed through the bus's keyed pool."""

    def __init__(self, bus: BaseBus, topic: str, handler: Handler, group: str | None) -> None:
        self.bus = bus
        self.topic = topic
        self.handler = handler
        self.group = group
        self.active = True

    async def settle(self, token: Any, ok: bool) -> None:
        """Backend hook after the handler ran (JetStream acks here)."""

    async def unsubscribe(self) -> None:
        """Stop delivery: after this returns the handler is not called again.

        Bounded by the bus's ``drain_timeout`` (plus each client call's own bound).
        """
        if not self.active:
            return
        self.active = False
        self.bus._subscriptions.discard(self)
        await self._stop(asyncio.get_running_loop().time() + self.bus.drain_timeout)

    async def _stop(self, deadline: float) -> None:
        """Backend hook: stop the intake (consumer loop, broker subscription) by ``deadline``
        (the loop's clock)."""


class BaseBus:
    """Shared lifecycle of the built-in backends."""

    scheme = "base"

    def __init__(
        self,
        *,
        workers: int = DEFAULT_WORKERS,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_S,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT_S,
        subscribe_timeout: float = DEFAULT_SUBSCRIBE_TIMEOUT_S,
    ) -> None:
        for name, value, least in (("drain_timeout", drain_timeout, 0.0), ("connect_timeout", connect_timeout, None),
                                   ("close_timeout", close_timeout, None),
                                   ("subscribe_timeout", subscribe_timeout, None)):
            ok = type(value) in (int, float) and math.isfinite(value) and (
                value >= least if least is not None else value > 0)
            if not ok:
                raise ValueError(f"{name} must be a number of seconds "
                                 f"{'>= 0' if least is not None else '> 0'}, got {value!r}")
        self.counters = BusCounters()
        self.drain_timeout = drain_timeout
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.subscribe_timeout = subscribe_timeout
        self.pool = KeyedWorkerPool(self.counters, workers=workers, queue_size=queue_size,
                                    on_death=self._worker_died)
        self.tasks = OwnedTasks()
        self.state = State.NEW
        self._subscriptions: set[BaseSubscription] = set()
        #: per key, the last sequence number stamped (and, for the broker backends, its frame's tail)
        self._framer = Framer()
        self._close_task: asyncio.Task | None = None
        self._closing_at = 0.0  # the loop's clock when close began
        #: the first failure noticed outside any call (a consumer loop or worker that died, a
        #: connection lost); ``faulted`` is set with it so a caller can wait on it
        self.fault: BusFault | None = None
        self.faulted = asyncio.Event()
        #: tasks the bus started that ignored cancellation at close (reported, never waited on)
        self.refused: list[asyncio.Task] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()} {self.state.value}>"

    def describe(self) -> str:
        """Where this bus points (URL without credentials)."""
        return f"{self.scheme}://"

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self.state is not State.NEW:
            raise BusClosedError(f"start() on a bus that is {self.state.value}")
        self.state = State.STARTING
        self.pool.start()
        try:
            await bounded(self._connect(), self.connect_timeout, "connect")
        except Exception as exc:
            try:
                await self.close()
            except BusCloseError as close_exc:
                log.debug("%s: closing after a failed start: %s", self.describe(), close_exc)
            if isinstance(exc, CallTimeout):
                where = f" (stuck at {innermost(exc.stack)})" if exc.stack else ""
                raise BusConnectError(
                    f"{self.describe()}: no connection within {self.connect_timeout:g} s{where}"
                ) from None
            if isinstance(exc, BusConnectError):
                raise
            reason = str(exc) if str(exc).startswith(type(exc).__name__) else f"{type(exc).__name__}: {exc}"
            # aiokafka names addresses as Python tuples: ('127.0.0.1', 9092, <AddressFamily.AF_INET: 2>)
            reason = re.sub(r"\('([^']*)', (\d+), <AddressFamily\.\w+: \d+>\)", r"\1:\2", reason)
            raise BusConnectError(f"{self.describe()}: {reason}") from exc
        self.state = State.STARTED

    def _fail(self, fault: BusFault) -> None:
        """Record the first fault noticed outside a call; later ones are only logged."""
        if self.state in (State.CLOSING, State.CLOSED):
            return  # what breaks while closing is close's business
        if self.fault is None:
            self.fault = fault
            self.faulted.set()
            log.error("%s", fault)
        else:
            log.debug("after the first fault: %s", fault)

    def _worker_died(self, task: asyncio.Task, exc: BaseException | None) -> None:
        what = "was cancelled by someone else" if exc is None else f"died: {type(exc).__name__}: {exc}"
        self._fail(BusFault(f"{self.describe()}: worker {task.get_name()} {what}"))

    async def close(self) -> None:
        """Stop subscriptions, drain in-flight envelopes, cancel and await the rest.

        Bounded: intake and drain by ``drain_timeout``, everything by ``close_timeout``
        (each client call gets at least a short moment even when that is used up), and
        tasks that ignore cancellation are given a short grace, then named in the
        :class:`BusCloseError` raised once everything else is closed. Idempotent; safe
        after a failed ``start()``; a concurrent or retried call (say after the first
        was cancelled) waits for the same close.
        """
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close(), name="bus.close")
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        self.state = State.CLOSING
        loop = asyncio.get_running_loop()
        now = self._closing_at = loop.time()
        close_deadline = now + self.close_timeout
        drain_deadline = min(now + self.drain_timeout, close_deadline)
        problems: list[str] = []
        try:
            await self._stop_intake(drain_deadline, problems)
            if not await self.pool.drain(max(0.0, drain_deadline - loop.time())):
                log.warning("%s: drain deadline passed with %d envelopes queued; cancelling",
                            self.describe(), self.pool.pending())
            for sub in list(self._subscriptions):
                sub.active = False
            self._subscriptions.clear()
            try:
                await self._disconnect(close_deadline, problems)
            except BusError as exc:
                problems.append(str(exc))
            except Exception as exc:  # close must finish even if the broker is gone
                log.warning("%s: error while disconnecting: %s", self.describe(), exc)
        finally:
            refused = await self.pool.stop()
            refused += await self.tasks.cancel_and_wait()
            try:
                refused += await self._after_close(close_deadline)
            except BusError as exc:
                problems.append(str(exc))
            self.refused = refused
            self.state = State.CLOSED
        if refused:
            problems.append("tasks ignored cancellation and are still running: "
                            + ", ".join(sorted(t.get_name() for t in refused)))
        if problems:
            raise BusCloseError(f"{self.describe()}: close: " + "; ".join(problems))

    def remaining(self, deadline: float) -> float:
        """Seconds until ``deadline`` (the loop's clock), never less than a shutdown call's minimum."""
        return max(MIN_SHUTDOWN_CALL_S, deadline - asyncio.get_running_loop().time())

    async def shutdown_call(self, call: Any, deadline: float, what: str, problems: list[str]) -> bool:
        """Run one client shutdown call within ``deadline``; a failure is noted, never raised.

        True if it returned in time. A library's own ``CancelledError`` (aiokafka #647)
        counts as a failure here, not as the caller being cancelled.
        """
        try:
            await bounded(call, self.remaining(deadline), what, grace=SHUTDOWN_CANCEL_GRACE_S)
            return True
        except (CallTimeout, LibraryCancelled) as exc:
            problems.append(str(exc))
        except Exception as exc:
            log.debug("%s: %s: %s", self.describe(), what, exc)
            problems.append(f"{what}: {type(exc).__name__}: {exc}")
        return False

    # -- data path -----------------------------------------------------------

    def _check_started(self, what: str = "publish()") -> None:
        if self.state is not State.STARTED:
            hint = ("await start() first" if self.state in (State.NEW, State.STARTING)
                    else "a closed bus stays closed: create a new one")
            raise BusClosedError(f"{what} on {self.describe()}, a bus that is {self.state.value}: {hint}")

    async def publish(self, topic: str, envelope: Envelope) -> None:
        """Publish one envelope; the bus stamps seq (per key) and ts_ns if they are 0."""
        if self.state is not _STARTED:
            self._check_started()
        if not envelope[3] or not envelope[4]:  # stamped inline (this runs once per envelope)
            seq = self._framer.next_seq(envelope[0])
            envelope = _new(Envelope, (envelope[0], envelope[1], envelope[2], envelope[3] or seq,
                                       envelope[4] or _monotonic_ns(), envelope[5]))
        if not self._publish_nowait(topic, envelope):
            await self._publish(topic, envelope)
        counters = self.counters
        counters.published += 1
        counters.bytes_out += len(envelope.payload)

    async def subscribe(
        self, topic: str, handler: Handler, *, group: str | None = None
    ) -> BaseSubscription:
        """Subscribe; returns once live: everything published afterwards is delivered."""
        self._check_started("subscribe()")
        if not topic:
            raise ValueError("topic must be a non-empty string")
        if not callable(handler):
            raise TypeError("handler must be an async callable taking an Envelope")
        try:
            sub = await bounded(self._subscribe(topic, handler, group), self.subscribe_timeout,
                                f"subscribe({topic!r})")
        except CallTimeout as exc:
            raise BusError(f"{self.describe()}: subscription to {topic!r} (group {group!r}) not live "
                           f"within {self.subscribe_timeout:g} s" + (f", stuck at {innermost(exc.stack)}"
                                                                    if exc.stack else "")) from None
        self._subscriptions.add(sub)
        return sub

    # -- backend hooks -------------------------------------------------------

    async def _connect(self) -> None:
        """Connect to the broker (bounded by connect_timeout)."""

    def _publish_nowait(self, topic: str, envelope: Envelope) -> bool:
        """Fast path: publish without awaiting if that can be done now; False if not."""
        return False

    async def _publish(self, topic: str, envelope: Envelope) -> None:
        raise NotImplementedError

    async def _subscribe(self, topic: str, handler: Handler, group: str | None) -> BaseSubscription:
        raise NotImplementedError

    async def _stop_intake(self, deadline: float, problems: list[str]) -> None:
        """Stop every subscription's intake so the pool can drain, all by one ``deadline``."""
        subs = list(self._subscriptions)
        if not subs:
            return
        results = await asyncio.gather(*(sub._stop(deadline) for sub in subs), return_exceptions=True)
        for sub, result in zip(subs, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BusError):
                problems.append(str(result))
            elif isinstance(result, BaseException):
                log.warning("%s: stopping %s: %s", self.describe(), sub.topic, result)

    async def _disconnect(self, deadline: float, problems: list[str]) -> None:
        """Flush and close broker connections by ``deadline`` (the loop's clock); note what failed."""

    async def _after_close(self, deadline: float) -> list[asyncio.Task]:
        """Await any task the client library started and only cancelled; return those that refused."""
        return []
