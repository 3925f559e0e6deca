"""A keyed worker pool: one key is always handled in order by one worker.

An envelope's key picks its worker by a stable hash (CRC-32), so per-key order
holds however many keys and publishers there are, while different keys run in
parallel. Each worker has a bounded queue (a *lane*): when it is full, ``submit``
waits (backpressure) instead of dropping or growing without limit.

**Eager dispatch.** Handing an envelope to a worker task costs an event-loop
wake-up per envelope. When the key's worker has nothing queued and nothing in
flight, the pool runs the delivery right away in the caller's step, until the
handler first suspends (what Python 3.12's eager task factory does for tasks); a
handler that completes without suspending never leaves the caller. A handler that
does suspend is handed, where it stands, to its worker, which finishes it before
anything queued behind it. While the first step runs, ``asyncio.current_task()``
is the worker's task and the handler runs in the worker's context, so timeouts,
task groups and context variables behave as they do on the worker. Order holds
because the lane counts as busy from the first step until the handler's end.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import types
import zlib
from collections import deque
from itertools import repeat
from typing import Any, Callable, Coroutine, Generator, Protocol, Sequence

from busmon.bus.counters import BusCounters
from busmon.bus.deadline import CANCEL_GRACE_S, cancel_and_wait
from busmon.bus.envelope import Envelope
from busmon.bus.errors import BusClosedError
from busmon.bus.protocol import Handler

log = logging.getLogger("bus.pool")

DEFAULT_WORKERS = 256
#: envelopes a worker's lane holds before ``submit`` waits. 128 held a flood back so often that,
#: with handlers that await, workers ran dry while the intake waited for room: core NATS with
#: ``await asyncio.sleep(0)`` handlers went from 0.79 to 0.89 of the raw client with 1024
#: (bench/bus_throughput.py; 4096 did no better). Bounded still: at most workers x this.
DEFAULT_QUEUE_SIZE = 1024
# each worker is a task created up front: a million of them takes minutes and gigabytes
MAX_WORKERS = 65_536
MAX_QUEUE_SIZE = 1_000_000
#: handlers run eagerly inside one another (a handler that publishes to a key whose
#: worker is idle) at most this deep; deeper ones are queued, so chains cannot exhaust the stack
MAX_EAGER_DEPTH = 16

#: keys whose hash (and lane) is remembered; past this the memo starts over
MAX_REMEMBERED_KEYS = 100_000

_CoroutineType = types.CoroutineType

#: which task is running is switched as Python 3.12's eager tasks do (``_swap_current_task``);
#: 3.11 has no such call: there, the dict that the C tasks and ``current_task()`` read
_swap_current_task: Callable[[asyncio.AbstractEventLoop, asyncio.Task | None], asyncio.Task | None] | None = \
    getattr(asyncio.tasks, "_swap_current_task", None)
_CURRENT: dict[asyncio.AbstractEventLoop, asyncio.Task] | None = \
    asyncio.tasks._current_tasks if _swap_current_task is None else None  # type: ignore[attr-defined]


async def _awaiting(awaitable: Any) -> None:
    """A handler that returned an awaitable other than a coroutine (a future, say)."""
    await awaitable


def _cancelling() -> bool:
    """Is the running task being cancelled (rather than a handler raising CancelledError itself)?"""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


_hashes: dict[str, int] = {}


def key_hash(key: str) -> int:
    """CRC-32 of the key, memoised: the same keys recur on every publish."""
    h = _hashes.get(key)
    if h is None:
        if len(_hashes) > MAX_REMEMBERED_KEYS:  # unbounded key spaces must not grow memory
            _hashes.clear()
        h = _hashes[key] = zlib.crc32(key.encode())
    return h


class Target(Protocol):
    """Where a pooled envelope goes: a live subscription's handler."""

    active: bool
    handler: Handler

    async def settle(self, token: Any, ok: bool) -> None:
        """Called after the handler when the backend gave a token (e.g. to ack)."""


Item = tuple[Target, Envelope, Any]


class _Lane:
    """One worker's queue and state."""

    __slots__ = ("items", "busy", "resume", "wake", "room", "drained", "context", "task")

    def __init__(self) -> None:
        self.items: deque[Item] = deque()
        #: a delivery is in flight (its eager first step, or in the worker)
        self.busy = False
        #: a delivery whose first step ran eagerly and then suspended: (coroutine, what it yielded)
        self.resume: tuple[Coroutine[Any, Any, None], Any] | None = None
        #: the idle worker waits on this
        self.wake: asyncio.Future[None] | None = None
        #: publishers waiting for room (backpressure), first come first served
        self.room: deque[asyncio.Future[None]] = deque()
        #: callers of ``drain`` waiting for this lane to be idle
        self.drained: list[asyncio.Future[None]] = []
        #: the context every delivery of this lane runs in: its worker task's
        self.context = contextvars.copy_context()
        self.task: asyncio.Task[None] | None = None


@types.coroutine
def _finish(coro: Coroutine[Any, Any, None], yielded: Any,
            error: BaseException | None = None) -> Generator[Any, None, None]:
    """Drive ``coro`` to its end from where its eager first step stopped, in the worker.

    ``yielded`` is what that step yielded: a future it waits on (the worker's task waits
    on it in its place), or ``None`` for a bare yield such as ``asyncio.sleep(0)`` (the
    loop iteration that woke the worker was the one it asked for). ``error`` is thrown in
    instead (the worker was cancelled before it could resume it). Once nothing is left to
    wait for, ``yield from`` hands the coroutine to the task itself: from then on its awaits
    and its cancellation pass in C, exactly as if it had run in the worker from the start.
    """
    while True:
        if error is None:
            if yielded is None or (asyncio.isfuture(yielded) and yielded.done()):
                return (yield from coro)  # type: ignore[misc]
            try:
                yield yielded  # the task waits on the future for it
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # the task's cancellation, or a bad yield
                error = exc
            else:
                return (yield from coro)  # type: ignore[misc]
        elif asyncio.isfuture(yielded) and not yielded.done():
            yielded.cancel()  # as a task's cancel() cancels the future it waits on
        try:
            yielded, error = coro.throw(error), None
        except StopIteration:
            return None


class KeyedWorkerPool:
    """Fixed set of named worker tasks, each draining its own bounded lane."""

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
        self._low_water = queue_size // 2
        self._name = name
        self._lanes: list[_Lane] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._worker_set: frozenset[asyncio.Task[None]] = frozenset()
        self._seen_errors: set[type[BaseException]] = set()
        self._on_death = on_death
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._depth = 0  # eager first steps running inside one another
        #: each key's lane, looked up once per key (bounded like the hashes)
        self._lane_of: dict[str, _Lane] = {}

    @property
    def workers(self) -> int:
        return self._n

    @property
    def tasks(self) -> tuple[asyncio.Task[None], ...]:
        return tuple(self._tasks)

    def start(self) -> None:
        """Create the lanes and worker tasks on the running loop."""
        if self._tasks:
            return
        self._loop = asyncio.get_running_loop()
        self._lanes = [_Lane() for _ in range(self._n)]
        self._lane_of.clear()
        for i, lane in enumerate(self._lanes):
            lane.task = asyncio.create_task(self._work(lane), name=f"{self._name}.worker-{i}",
                                            context=lane.context)
            lane.task.add_done_callback(lambda task, lane=lane: self._worker_done(task, lane))
            self._tasks.append(lane.task)
        self._worker_set = frozenset(self._tasks)

    def _worker_done(self, task: asyncio.Task, lane: _Lane) -> None:
        """A worker only ends when the pool stops it; any other end is a fault, said at once."""
        lane.busy = True  # nothing runs on its lane any more, eagerly or not: envelopes queue up
        exc = None if task.cancelled() else task.exception()
        if not self._stopping and self._on_death is not None:
            self._on_death(task, exc)

    def _lane(self, key: str) -> _Lane:
        """The lane that owns ``key``."""
        return self._lane_of.get(key) or self._lane_for(key)

    def _lane_for(self, key: str) -> _Lane:
        """The lane that owns ``key``, worked out and remembered (``_lane_of`` misses it)."""
        lane_of = self._lane_of
        if len(lane_of) >= MAX_REMEMBERED_KEYS:  # unbounded key spaces must not grow memory
            lane_of.clear()
        lane = lane_of[key] = self._lanes[key_hash(key) % self._n]
        return lane

    def worker_for(self, key: str) -> int:
        """The index of the worker that owns ``key`` (stable across runs)."""
        return key_hash(key) % self._n

    def pending(self) -> int:
        """Envelopes queued and not yet taken by a worker."""
        return sum(len(lane.items) for lane in self._lanes)

    # -- handing envelopes over -------------------------------------------------

    def offer(self, target: Target, envelope: Envelope, token: Any = None) -> bool:
        """Deliver now if the key's worker is idle, else queue without waiting; False when
        the key's lane is full (then await ``submit``)."""
        key = envelope[0]
        lane = self._lane_of.get(key) or self._lane_for(key)  # inline: the memory bus's hot path
        if lane.busy or lane.items or self._depth >= MAX_EAGER_DEPTH:
            if len(lane.items) >= self._queue_size:
                return False
            lane.items.append((target, envelope, token))
            if lane.wake is not None:
                self._wake(lane)
            return True
        if token is not None:  # a settle follows the handler: the delivery loop does both
            self._start(lane, self._deliver_all(deque(((target, envelope, token),))))
            return True
        if target.active:  # the plain case, with nothing around the handler's own coroutine
            counters = self._counters
            counters.delivered += 1
            counters.bytes_in += len(envelope[2])
            try:
                coro = target.handler(envelope)
            except Exception as exc:
                self._handler_failed(exc)
                return True
            self._start(lane, coro if coro.__class__ is _CoroutineType else _awaiting(coro))
        return True

    def offer_many(self, target: Target, envelopes: Sequence[Envelope],
                   tokens: Sequence[Any] | None = None) -> list[Item]:
        """Hand over a fetched batch (a Kafka ``getmany``, a JetStream pull, NATS's pending
        messages): each worker gets its share as one delivery run, eagerly if it is idle, else
        queued behind one wake-up, instead of one hand-off per envelope.

        Returns, in order, what did not fit (a full lane): ``await submit_many(left)``.
        """
        if tokens is not None:
            return self._offer_settled(target, envelopes, tokens)
        # grouped by lane as bare envelopes: an (target, envelope, token) item is only made for
        # what has to queue (this loop runs once per envelope delivered)
        groups: dict[_Lane, list[Envelope]] = {}
        lane_of, get_group = self._lane_of.get, groups.get
        for envelope in envelopes:
            key = envelope[0]
            lane = lane_of(key) or self._lane_for(key)
            group = get_group(lane)
            if group is None:
                groups[lane] = [envelope]
            else:
                group.append(envelope)
        return self._hand_over(target, groups, settled=False)

    def _offer_settled(self, target: Target, envelopes: Sequence[Envelope], tokens: Sequence[Any]) -> list[Item]:
        """:meth:`offer_many` for deliveries settled (acked) after their handler."""
        groups: dict[_Lane, list[Item]] = {}
        lane_of, get_group = self._lane_of.get, groups.get
        for item in zip(repeat(target), envelopes, tokens):
            key = item[1][0]
            lane = lane_of(key) or self._lane_for(key)
            group = get_group(lane)
            if group is None:
                groups[lane] = [item]
            else:
                group.append(item)
        return self._hand_over(target, groups, settled=True)

    def _hand_over(self, target: Target, groups: dict[_Lane, list[Any]], settled: bool) -> list[Item]:
        """Each lane's share of a batch (bare envelopes, or items when ``settled``): run at once if
        the lane is idle (at most a queue's worth), the rest queued up to the bound; returns, in
        order, what did not fit."""
        left: list[Item] = []
        size = self._queue_size
        for lane, group in groups.items():
            if not lane.busy and not lane.items and self._depth < MAX_EAGER_DEPTH:
                run = group if len(group) <= size else group[:size]  # bounded like a queue
                self._start(lane, self._deliver_all(deque(run)) if settled else self._deliver_run(target, run))
                if run is group:
                    continue
                group = group[size:]
            if not settled:
                group = [(target, e, None) for e in group]
            items = lane.items
            room = size - len(items)
            items.extend(group[:room])
            left.extend(group[room:])
            if lane.wake is not None and items:
                self._wake(lane)
        return left

    async def submit(self, target: Target, envelope: Envelope, token: Any = None) -> None:
        """Hand ``envelope`` to ``target`` on its key's worker; wait while that lane is full."""
        if self.offer(target, envelope, token):
            return
        if self._stopping:
            raise BusClosedError("the bus closed while this publish waited for room in its queue")
        lane = self._lane(envelope[0])
        if self._from_a_handler():
            lane.items.append((target, envelope, token))
            if lane.wake is not None:
                self._wake(lane)
            return
        loop = asyncio.get_running_loop()
        while True:
            room = loop.create_future()
            lane.room.append(room)
            try:
                await room
            except BaseException:
                room.cancel()
                try:
                    lane.room.remove(room)
                except ValueError:  # it was let in already: pass the room on
                    self._let_in(lane)
                raise
            if self.offer(target, envelope, token):
                return

    async def submit_many(self, items: list[Item]) -> None:
        """Hand over what :meth:`offer_many` gave back, each lane's envelopes in their order,
        waiting for room in *any* of their lanes, not for each in turn: waiting on one full lane
        while the others run dry would leave their workers idle (with handlers that await, a
        third of the throughput)."""
        waiting: dict[_Lane, deque[Item]] = {}
        for item in items:
            key = item[1][0]
            waiting.setdefault(self._lane(key), deque()).append(item)
        loop = asyncio.get_running_loop()
        while waiting:
            for lane in list(waiting):
                queue = waiting[lane]
                while queue and self.offer(*queue[0]):
                    queue.popleft()
                if not queue:
                    del waiting[lane]
            if not waiting:
                return
            if self._stopping:
                raise BusClosedError("the bus closed while this publish waited for room in its queue")
            if self._from_a_handler():
                for lane, queue in waiting.items():
                    lane.items.extend(queue)
                    if lane.wake is not None:
                        self._wake(lane)
                return
            room = loop.create_future()  # one wake-up, from whichever of these lanes has room first
            lanes = list(waiting)
            for lane in lanes:
                lane.room.append(room)
            try:
                await room
            finally:
                room.cancel()
                for lane in lanes:
                    try:
                        lane.room.remove(room)
                    except ValueError:
                        pass

    def _from_a_handler(self) -> bool:
        """Is this hand-off made by a handler of this pool (its publish to the same bus)?

        Then it never waits for room: the room it would wait for is made by this very worker,
        or by one that may be waiting on it in turn, and both would wait for good. Such a
        hand-off may take a lane past its bound, by what handlers publish per delivery.
        """
        task = asyncio.current_task()
        return task is not None and task in self._worker_set

    @staticmethod
    def _wake(lane: _Lane) -> None:
        wake, lane.wake = lane.wake, None
        if wake is not None and not wake.done():
            wake.set_result(None)

    def _let_in(self, lane: _Lane) -> None:
        """Wake publishers waiting for room in ``lane``, first come first served, one for each
        free place."""
        free = self._queue_size - len(lane.items)
        while lane.room and free > 0:
            room = lane.room.popleft()
            if not room.done():
                room.set_result(None)
                free -= 1

    # -- running deliveries -----------------------------------------------------

    def _start(self, lane: _Lane, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro``'s first step now, as ``lane``'s worker (its task current, its context);
        if it suspends, the worker finishes it before anything queued behind it."""
        loop = self._loop
        lane.busy = True
        self._depth += 1
        current = _CURRENT
        if current is not None:
            caller = current.get(loop)
            current[loop] = lane.task  # type: ignore[index,assignment]
        else:
            caller = _swap_current_task(loop, lane.task)  # type: ignore[misc]
        try:
            yielded = lane.context.run(coro.send, None)
        except StopIteration:
            self._idle(lane)
            return
        except (KeyboardInterrupt, SystemExit):
            lane.busy = False
            raise
        except BaseException as exc:  # a handler's error, or CancelledError it raised itself
            self._handler_failed(exc)
            self._idle(lane)
            return
        finally:
            if current is None:
                _swap_current_task(loop, caller)  # type: ignore[misc]
            elif caller is None:
                del current[loop]  # type: ignore[arg-type]
            else:
                current[loop] = caller  # type: ignore[index]
            self._depth -= 1
        lane.resume = (coro, yielded)
        self._wake(lane)

    def _idle(self, lane: _Lane) -> None:
        """A delivery on ``lane`` ended: wake its worker for what queued meanwhile, or tell
        whoever waits for the lane to drain."""
        lane.busy = False
        if lane.room:
            self._let_in(lane)
        if lane.items:
            self._wake(lane)
        elif lane.drained:
            waiters, lane.drained = lane.drained, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def _deliver_all(self, items: deque[Item], lane: _Lane | None = None) -> None:
        """Deliver ``items`` in order: each handler, then its settle (ack) if it has a token.

        Handlers are awaited here directly: a run of envelopes costs one coroutine, not one
        per envelope. ``lane`` is given when ``items`` is its queue (taking one makes room).
        """
        counters = self._counters
        while items:
            target, envelope, token = items.popleft()
            # publishers waiting for room are let in once the lane is half empty, not at every
            # envelope taken: a flood then costs them one wake-up per half a queue, not one each
            if lane is not None and lane.room and len(items) <= self._low_water:
                self._let_in(lane)
            if not target.active:
                continue
            counters.delivered += 1
            counters.bytes_in += len(envelope[2])
            ok = True
            try:
                await target.handler(envelope)
            except Exception as exc:  # a handler's bug must not end the run (or kill the worker)
                ok = False
                self._handler_failed(exc)
            except asyncio.CancelledError as exc:
                if _cancelling():
                    raise
                ok = False
                self._handler_failed(exc)
            if token is not None:
                try:
                    await target.settle(token, ok)
                except Exception as exc:  # an ack that fails must not end the run either
                    self._settle_failed(exc)

    async def _deliver_run(self, target: Target, envelopes: list[Envelope]) -> None:
        """Deliver a batch's share for one lane, in order (no settles): :meth:`_deliver_all`
        without an item per envelope."""
        counters = self._counters
        handler = target.handler
        for envelope in envelopes:
            if not target.active:
                return
            counters.delivered += 1
            counters.bytes_in += len(envelope[2])
            try:
                await handler(envelope)
            except Exception as exc:  # a handler's bug must not end the run (or kill the worker)
                self._handler_failed(exc)
            except asyncio.CancelledError as exc:
                if _cancelling():
                    raise
                self._handler_failed(exc)

    def _handler_failed(self, exc: BaseException) -> None:
        self._counters.handler_errors += 1
        if type(exc) not in self._seen_errors:
            self._seen_errors.add(type(exc))
            log.error("handler raised %s (logged once per kind)", type(exc).__name__, exc_info=exc)

    def _settle_failed(self, exc: BaseException) -> None:
        self._counters.handler_errors += 1
        log.debug("settling a delivery failed: %r", exc)

    async def _work(self, lane: _Lane) -> None:
        loop = asyncio.get_running_loop()
        items = lane.items
        while True:
            if lane.resume is None and not items:
                wake = lane.wake = loop.create_future()
                try:
                    await wake
                except asyncio.CancelledError:
                    lane.wake = None
                    if lane.resume is None:
                        raise
                    # a delivery was handed over and not yet resumed: it gets the cancellation, as
                    # it would have in the worker; it may be its own timeout, which it takes back
                    await self._resume(lane, asyncio.CancelledError())
                    if _cancelling():
                        raise
                continue
            if lane.resume is not None:
                await self._resume(lane)
                continue
            lane.busy = True
            try:
                await self._deliver_all(items, lane)
            finally:
                self._idle(lane)

    async def _resume(self, lane: _Lane, error: BaseException | None = None) -> None:
        """Finish, in the worker, a delivery whose first step ran eagerly and suspended."""
        assert lane.resume is not None
        coro, yielded = lane.resume
        lane.resume = None
        try:
            await _finish(coro, yielded, error)
        except Exception as exc:  # a lone handler's error (a run catches its own)
            self._handler_failed(exc)
        except asyncio.CancelledError as exc:
            if _cancelling():
                raise
            self._handler_failed(exc)
        finally:
            self._idle(lane)

    # -- the end ---------------------------------------------------------------------

    async def drain(self, timeout: float) -> bool:
        """Wait until every queued or in-flight envelope has been handled; False if ``timeout``
        passed first."""
        if not self._lanes:
            return True
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                for lane in self._lanes:
                    while lane.busy or lane.items:
                        fut = loop.create_future()
                        lane.drained.append(fut)
                        await fut
        except TimeoutError:
            return False
        return True

    async def stop(self, grace: float = CANCEL_GRACE_S) -> list[asyncio.Task]:
        """Cancel the workers and wait until every one has exited; return those that did not
        within ``grace`` (a handler that ignores cancellation)."""
        self._stopping = True
        refused = await cancel_and_wait(self._tasks, grace)
        self._tasks = []
        self._worker_set = frozenset()
        for lane in self._lanes:
            lane.task = None  # a cancelled task keeps its CancelledError and traceback: let both go
            lane.busy = True  # and nothing starts on the lane any more
            for room in lane.room:  # a publisher still waiting for room: the pool is gone
                if not room.done():
                    room.set_exception(BusClosedError(
                        "the bus closed while this publish waited for room in its queue"))
            lane.room.clear()
            if lane.resume is not None:  # its worker ended before it ever took the delivery:
                coro, yielded = lane.resume  # it is cancelled here, as it would have been there
                lane.resume = None
                if asyncio.isfuture(yielded):
                    yielded.cancel()
                try:
                    lane.context.run(coro.throw, asyncio.CancelledError())
                except (StopIteration, asyncio.CancelledError):
                    pass
                except Exception as exc:
                    self._handler_failed(exc)
                else:  # it would not stop: it gets no second chance
                    try:
                        coro.close()
                    except RuntimeError as exc:  # it ignored GeneratorExit as well
                        log.warning("a handler would not stop when its pool stopped: %s", exc)
        return refused
