"""How blocked the arena's event loop is, and who blocked it.

A heartbeat timer on the watched loop measures how late it runs (lag, per phase). A
watchdog thread notices when the heartbeat is overdue and reads the loop thread's
stack *while* it is stuck: read afterwards, it would only show where the loop went
next, not what held it.

One watchdog thread serves every loop watched with ``shared=True`` (the pytest plugin's and
``watch()``'s): started the first time one is armed, parked on a condition between watches (no
wake-ups, no CPU), so a watched test pays for no thread start or join. ``busmon play`` keeps a
dedicated thread per watch (the default), ended at ``stop``.

The heartbeat is a ``call_later`` chain on the loop itself, not beats posted by the
watchdog: then whether the loop stalled depends only on the loop, never on whether the
watchdog thread was scheduled on time (on a loaded machine it is not, and a late post
looks exactly like a stall). The watchdog only names stalls, and sleeps until the loop
could first be past the threshold, so a healthy loop wakes it about once a threshold.
The price of a timer: asyncio peeks at its timer heap every loop iteration while one is
scheduled. On a loop with no other timer that is 1-2% of a trivial-callback benchmark;
the arena always has one (the sampler's sleep, the clients' own), so there it is nil.

Definitions (times from ``time.monotonic()``; lag from ``loop.time()``, its own clock):

* lag: how late a beat ran after its due time, less busmon's own work since the last beat.
* gap: time between two consecutive beats, i.e. since the loop last provably ran.
* stall: a gap whose part not spent in :meth:`LoopWatch.own_work` exceeds ``stall_ms``.
  Its duration is that part: an upper bound on the block, at most one beat too long
  (the block may have begun up to a beat after the last beat). Any block of at least
  ``stall_ms`` is caught; one up to a beat shorter may be too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import linecache
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, NamedTuple, Sequence

from busmon.bus.deadline import short_where
from busmon.probes.observe.components import package_of
from busmon.probes.observe import loop_totals
from busmon.probes.observe.histogram import LatencyHistogram

__all__ = ["DEFAULT_BEAT_MS", "DEFAULT_STALL_MS", "WATCHDOG_THREAD_NAME", "Frame", "LoopWatch",
           "Stall", "blocking_frame", "describe", "is_watchdog_thread", "loop_is_idle", "shared_watchdog"]

DEFAULT_STALL_MS = 100
DEFAULT_BEAT_MS = 20
WATCHDOG_THREAD_NAME = "busmon.loop-watchdog"
#: innermost frames kept in a stall's stack
STACK_LIMIT = 24
#: stalls kept (the newest); a bus that stalls all the time needs no more to be judged
MAX_STALLS = 1000
#: distinct blocking frames counted per stall; later ones are ignored
MAX_DISTINCT = 32
#: samples per stall taken every watchdog tick; after that, one every SLOW_EVERY ticks
FAST_SAMPLES = 40
SLOW_EVERY = 10
#: top-level modules where the loop dispatches or waits: never the one that blocked it
MACHINERY = frozenset({"asyncio", "threading", "selectors", "concurrent"})
#: busmon's measuring package (``busmon.probes``): its frames wrap the bus's calls, so they are
#: looked through (the embedded bus's, ``busmon.bus``, are a bus's like any other)
OWN_PACKAGE = package_of(__name__)


class Frame(NamedTuple):
    """One frame of the loop thread, copied so no frame object (and its locals) is kept alive."""

    filename: str
    lineno: int | None
    function: str
    module: str  # the frame's ``__name__`` ('' when unknown)

    @property
    def top(self) -> str:
        """The top-level package: from the module name, which is exact, else from the path."""
        if self.module and self.module != "__main__":
            return package_of(self.module)
        path = short_where(self.filename, None, "").split(" in ", 1)[0]
        return path.split("/", 1)[0].removesuffix(".py")

    def where(self) -> str:
        return short_where(self.filename, self.lineno, self.function)


@dataclass(frozen=True, slots=True)
class Stall:
    """A time the watched loop ran nothing, and the call that held it."""

    phase: str
    started_at: float          # time.monotonic() when the loop last ran before the stall
    duration_ms: float
    blocking: str              # 'package/module.py:12 in fn: <source line>' or '' if unknown
    component: str             # top package of the blocking frame; 'unknown' if none
    stack: tuple[str, ...]     # innermost last
    samples: int = 0           # stacks sampled inside a callback during it (0: never seen live)

    def as_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "started_at": self.started_at,
                "duration_ms": self.duration_ms, "blocking": self.blocking,
                "component": self.component, "stack": list(self.stack), "samples": self.samples}


def blocking_frame(frames: Sequence[Frame]) -> Frame | None:
    """The frame that holds the loop: the innermost one that is not asyncio's or threading's
    machinery nor busmon's own, preferring code outside the standard library (the bus calling
    ``ssl`` is the bus's doing); the innermost standard-library one if that is all there is."""
    fallback: Frame | None = None
    for frame in reversed(frames):
        top = frame.top
        if top in MACHINERY or top == OWN_PACKAGE:
            continue
        if top in sys.stdlib_module_names or frame.filename.startswith("<frozen "):
            fallback = fallback or frame
            continue
        return frame
    return fallback


def describe(frames: Sequence[Frame]) -> tuple[str, str]:
    """``(blocking, component)`` for a stack, innermost last."""
    frame = blocking_frame(frames)
    if frame is None:
        return "", "unknown"
    line = linecache.getline(frame.filename, frame.lineno).strip() if frame.lineno else ""
    return (f"{frame.where()}: {line}" if line else frame.where()), frame.top or "unknown"


def loop_is_idle(frames: Sequence[Frame]) -> bool:
    """The loop thread waits in its selector, called by the loop itself: it runs no callback
    (a sample like this names nothing: the loop is starved of the GIL or the CPU, or is
    just leaving the stall)."""
    return (len(frames) >= 2 and frames[-1].top == "selectors"
            and frames[-2].top == "asyncio" and frames[-2].function == "_run_once")


def _walk(frame: FrameType | None, limit: int = STACK_LIMIT) -> list[Frame]:
    """Copy the innermost ``limit`` frames, innermost last; no source lookup (that may do I/O
    and let the loop thread move on while the chain is half read)."""
    out: list[Frame] = []
    while frame is not None and len(out) < limit:
        code = frame.f_code
        out.append(Frame(code.co_filename, frame.f_lineno, code.co_name,
                         frame.f_globals.get("__name__") or ""))
        frame = frame.f_back
    out.reverse()
    return out


class _Seen(NamedTuple):
    """What the watchdog saw of the stall in progress; replaced whole, so readers need no lock."""

    start: float  # the last_beat the stall follows: which stall this is
    phase: str
    blocking: str
    component: str
    stack: tuple[str, ...]
    busy: int     # samples with the loop thread inside a callback


class _OwnWork(contextlib.AbstractContextManager):
    __slots__ = ("_watch",)

    def __init__(self, watch: LoopWatch) -> None:
        self._watch = watch

    def __enter__(self) -> None:
        self._watch._own_enter()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._watch._own_exit()


class LoopWatch:
    """Heartbeat lag per phase and stalls with their blocking call, for one event loop.

    ``start``/``stop`` from one controlling thread; everything else from any thread.
    ``shared``: armed on the process's one watchdog thread (see :func:`shared_watchdog`), not
    on a thread of its own started at ``start`` and joined at ``stop``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, beat_ms: int = DEFAULT_BEAT_MS,
                 stall_ms: int = DEFAULT_STALL_MS, shared: bool = False) -> None:
        if beat_ms <= 0 or stall_ms < 2:
            raise ValueError(f"need beat_ms > 0 and stall_ms >= 2, got {beat_ms}, {stall_ms}")
        # an idle gap is a beat plus timer slack: the beat must be well under the threshold
        beat_ms = min(beat_ms, stall_ms // 2)
        self._loop = loop
        self._beat_s = beat_ms / 1000
        self._stall_s = stall_ms / 1000
        self._tick_s = self._stall_s / 4  # how often a stall in progress is sampled
        #: time.monotonic() of the latest beat (None before the first)
        self.last_beat: float | None = None
        self.beats = 0
        #: stalls that were busmon's own work (not findings), and their total length
        self.own_stalls = 0
        self.own_stall_ms = 0.0
        self._phase = "idle"
        self._hists: dict[str, LatencyHistogram] = {}
        self._stalls: collections.deque[tuple[float, Stall]] = collections.deque(maxlen=MAX_STALLS)
        self._on = False
        self._gen = 0  # a beat of an earlier start() finds a newer generation and ends its chain
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._ident: int | None = None
        self._paused = False
        self._own_lock = threading.Lock()
        #: (depth, outermost entry time, own seconds before it): swapped whole, read lock-free
        self._own: tuple[int, float, float] = (0, 0.0, 0.0)
        #: (last_beat, own seconds then): one tuple, so the watchdog reads a consistent pair
        self._mark: tuple[float, float] | None = None
        self._seen: _Seen | None = None
        #: the process's one watchdog (shared) or this watch's own, made at start()
        self._shared = shared
        self._watchdog: _Watchdog | None = None
        self._tally = _Tally()
        #: the loop's own ``run_forever`` before :meth:`start` (``track_runs``) wrapped it
        self._run_forever: Any = None

    # -- control ---------------------------------------------------------------------------

    def start(self, track_runs: bool = False) -> None:
        """Arm the heartbeat on the loop (from any thread; raises on a closed loop) and start
        the watchdog.

        ``track_runs``: the loop is run and stopped by someone else, in turns (a test's loop,
        run for each async fixture and for the body); the time between its runs is not a stall.
        Its ``run_forever`` is wrapped (on the instance, until :meth:`stop`) to say exactly when
        it starts again, rather than hoping the watchdog wakes while it is stopped.
        """
        if self._on:
            return
        self.last_beat = self._mark = None
        self._gen += 1
        if _running_loop() is self._loop:  # from a coroutine on it: watch from now, not its next turn
            self._arm(self._gen)
        elif not self._loop.is_closed() and not self._loop.is_running():
            # a test's idle loop, about to be run by this thread: no wake-up through the loop's
            # self-pipe needed (a write here, two reads on the loop: ~10 µs of the watch's cost)
            self._loop.call_soon(self._arm, self._gen)
        else:
            self._loop.call_soon_threadsafe(self._arm, self._gen)
        if track_runs:
            self._track_runs()
        self._on = True
        self._tally = _Tally()
        if self._shared:
            self._watchdog = shared_watchdog()
        elif self._watchdog is None:
            self._watchdog = _Watchdog(WATCHDOG_THREAD_NAME, dedicated=True)
        self._watchdog.arm(self, self._tick_s)

    @property
    def _thread(self) -> threading.Thread | None:
        """The watchdog's thread (the shared one's, or this watch's own until stop joined it)."""
        dog = self._watchdog
        return dog.thread if dog is not None else None

    def stop(self, timeout: float = 1.0) -> None:
        """End the heartbeat and disarm the watchdog: once this returns it looks at this loop no
        more (a dedicated thread is joined, at most ``timeout``; the shared one parks when nothing
        else is armed). Never raises: on a closed loop nothing runs anyway, and a beat already
        due finds a newer generation.

        On the loop's own thread, or with the loop stopped, the pending beat is cancelled here
        and now: no timer of busmon's is left on a loop someone else owns."""
        if self._on:
            self._on = False
            self._gen += 1
            if self._watchdog is not None:
                self._watchdog.disarm(self)
            self._untrack_runs()
            loop = self._loop
            if threading.get_ident() == self._ident or not loop.is_running():
                self._disarm()
            else:
                with contextlib.suppress(RuntimeError):  # closed
                    loop.call_soon_threadsafe(self._disarm)
        dog = self._watchdog
        if dog is not None and dog.dedicated and dog.close(timeout):
            self._watchdog = None
        self.last_beat = self._mark = None

    def set_phase(self, phase: str) -> None:
        self._phase = phase

    @property
    def phase(self) -> str:
        return self._phase

    def own_work(self) -> contextlib.AbstractContextManager[None]:
        """Mark busmon's own blocking work (gc.collect, a census): its stalls are not findings.

        Wrap only work that blocks the watched loop, without awaits inside: its time is taken
        off the lag and the stalls of the intervals it falls in. Nests; any thread.
        """
        return _OwnWork(self)

    def reset(self) -> None:
        """A new run: forget lag and stalls (the heartbeat keeps going)."""
        self._hists = {}
        self._stalls = collections.deque(maxlen=MAX_STALLS)
        self.own_stalls = 0
        self.own_stall_ms = 0.0

    # -- readings --------------------------------------------------------------------------

    def lag(self, phase: str) -> dict[str, float]:
        """``{'p50_ms', 'p99_ms', 'max_ms', 'count'}`` for ``phase``; ``{}`` when none."""
        hist = self._hists.get(phase)
        if hist is None or not hist.count:
            return {}
        s = hist.summary_ms()
        return {"p50_ms": s["p50"], "p99_ms": s["p99"], "max_ms": s["max"], "count": hist.count}

    def lag_now(self) -> dict[str, float]:
        return self.lag(self._phase)

    def phases(self) -> list[str]:
        return list(self._hists)

    def stalls_since(self, t: float) -> list[Stall]:
        """Stalls that ended at or after ``t`` (monotonic), oldest first."""
        return [s for end, s in list(self._stalls) if end >= t]

    @property
    def ongoing(self) -> Stall | None:
        """The stall in progress right now (duration so far), for a live panel."""
        mark = self._mark
        if mark is None or not self._on or not self._loop.is_running() or self._own[0]:
            return None
        last, own_then = mark
        now = time.monotonic()
        bus = now - last - (self._own_total(now) - own_then)
        if bus <= self._stall_s:
            return None
        return _stall(self._seen_for(last), last, bus, self._phase)

    def _seen_for(self, last: float) -> _Seen | None:
        seen = self._seen
        return seen if seen is not None and seen.start == last else None

    # -- the loop thread -------------------------------------------------------------------

    def _arm(self, gen: int) -> None:
        if gen != self._gen:
            return
        self._ident = threading.get_ident()
        now = time.monotonic()
        self._mark = (now, self._own_total(now))
        self.last_beat = now
        self._paused = False
        self._due = self._loop.time() + self._beat_s
        self._handle = self._loop.call_at(self._due, self._beat, gen)

    def _beat(self, gen: int) -> None:
        """Record how late this beat is; close the stall it ends, if any; schedule the next.

        The next beat is due a beat after this one *ran*, not after it was due: after a
        stall, a fixed-rate chain would run a burst of late beats, each counting it again.
        """
        if gen != self._gen:
            return
        loop = self._loop
        now_l = loop.time()
        now = time.monotonic()
        prev = self._mark
        own = self._own_total(now)
        self._mark = (now, own)
        self.last_beat = now
        self.beats += 1
        if self._paused:  # the loop was stopped meanwhile: the gap is not a stall
            self._paused = False
        elif prev is not None:
            own_gap = own - prev[1]
            lag = now_l - self._due - own_gap
            hist = self._hists.get(self._phase)
            if hist is None:
                hist = self._hists[self._phase] = LatencyHistogram()
            hist.record(int(lag * 1e9) if lag > 0 else 0)
            if (totals := loop_totals.current()) is not None:  # --metrics: the process's, never reset
                totals.beat(lag)
            gap = now - prev[0]
            if gap > self._stall_s:
                self._close(prev[0], now, gap, own_gap)
        self._due = now_l + self._beat_s
        self._handle = loop.call_at(self._due, self._beat, gen)

    def _close(self, start: float, end: float, gap: float, own_gap: float) -> None:
        bus = gap - own_gap
        if bus > self._stall_s:
            self._stalls.append((end, _stall(self._seen_for(start), start, bus, self._phase)))
            if (totals := loop_totals.current()) is not None:
                totals.stall()
        else:
            self.own_stalls += 1
            self.own_stall_ms += round(gap * 1e3, 3)

    def _disarm(self) -> None:
        if not self._on and self._handle is not None:
            self._handle.cancel()
            self._handle = None

    # -- a loop run in turns ---------------------------------------------------------------

    def _track_runs(self) -> None:
        loop = self._loop
        if self._run_forever is not None or "run_forever" in vars(loop):
            return  # someone else's wrapper is there: the watchdog's own look will have to do
        own = loop.run_forever

        def run_forever() -> None:
            self._resumed()
            return own()

        try:
            loop.run_forever = run_forever  # type: ignore[method-assign]
        except AttributeError:  # a loop with no instance dict (uvloop): the watchdog's look
            return
        self._run_forever = run_forever

    def _untrack_runs(self) -> None:
        if self._run_forever is not None and vars(self._loop).get("run_forever") is self._run_forever:
            del self._loop.run_forever
        self._run_forever = None

    def _resumed(self) -> None:
        """The loop is about to run again (its own thread, before it runs anything): it last
        provably ran now, whatever the gap since its last beat."""
        now = time.monotonic()
        self._mark = (now, self._own_total(now))
        self.last_beat = now
        self._paused = False

    # -- own work (any thread) -------------------------------------------------------------

    def _own_total(self, now: float) -> float:
        """Seconds of own work so far: a clock that runs only inside own_work()."""
        depth, since, done = self._own
        return done + (now - since) if depth else done

    def _own_enter(self) -> None:
        with self._own_lock:
            depth, since, done = self._own
            self._own = (depth + 1, since if depth else time.monotonic(), done)

    def _own_exit(self) -> None:
        with self._own_lock:
            depth, since, done = self._own
            if depth == 1:
                self._own = (0, 0.0, done + time.monotonic() - since)
            elif depth > 1:
                self._own = (depth - 1, since, done)

    # -- the watchdog thread ---------------------------------------------------------------

    def _look(self) -> float | None:
        """One look by the watchdog: seconds until the next (None: the loop is closed, look no
        more). It sleeps until the loop could first be past the threshold; if it is, it samples
        the loop's stack every quarter threshold until the stall ends.

        A healthy loop so costs about one wake-up per threshold, not one per beat. Holds no
        lock the loop thread takes, and keeps no frame object past the copy. A loop that
        holds the GIL (a long C call) keeps the watchdog out until the call returns; it then
        samples at once, while the loop thread is still in the caller's frame.
        """
        tick = self._tick_s
        loop = self._loop
        if loop.is_closed():
            return None
        if not loop.is_running():
            if self._run_forever is None:  # tracked runs say when the loop resumes
                self._paused = True
            return tick
        mark = self._mark
        if mark is None or self._own[0]:
            return tick
        now = time.monotonic()
        last, own_then = mark
        left = self._stall_s - (now - last - (self._own_total(now) - own_then))
        if left >= 0:
            return max(left, 0.001)
        self._sample(mark, self._tally)
        return tick

    def _sample(self, mark: tuple[float, float], tally: _Tally) -> None:
        last = mark[0]
        if tally.start != last:
            tally.restart(last)
        tally.ticks += 1
        if tally.ticks > FAST_SAMPLES and tally.ticks % SLOW_EVERY:
            return  # a long stall: its name is settled, sample it less often
        frame = sys._current_frames().get(self._ident or -1)
        frames = _walk(frame)
        del frame
        if not frames or loop_is_idle(frames):
            return  # the loop is waiting, not blocked: nothing to name
        phase = self._phase
        blocking, component = describe(frames)  # its first read of a file lets go of the GIL
        stack = tuple(f.where() for f in frames)
        if self._mark is not mark:
            return  # the stall ended while we looked: this stack is not its
        tally.add(blocking, component, stack, phase)
        self._seen = tally.seen()


class _Watchdog:
    """A thread that looks at every armed :class:`LoopWatch` when its next look is due, and
    waits on a condition in between: with nothing armed it waits with no timeout (parked).

    Each armed watch keeps its own state (marks, tally, stalls); the watchdog only keeps when
    to look at each next, so concurrent watches of different loops are independent. A look
    runs outside the lock, so arming and disarming never wait for a stack sample, except
    ``disarm`` of the watch being looked at right then (after it returns, no look touches it).
    """

    def __init__(self, name: str, dedicated: bool = False) -> None:
        self.name = name
        #: one watch's own thread, ended by close(); else the shared one, alive until exit
        self.dedicated = dedicated
        self.thread: threading.Thread | None = None
        self.starts = 0  # threads started (the shared one: 1 per process)
        self.wakeups = 0  # times the thread's wait returned (parked: none)
        self._cond = threading.Condition(threading.Lock())
        self._armed: dict[LoopWatch, float] = {}  # watch → when to look next (monotonic)
        self._looking: LoopWatch | None = None    # looked at now, outside the lock
        self._wake_at = math.inf                  # when the thread looks next; inf: parked
        self._closing = False

    @property
    def armed(self) -> int:
        return len(self._armed)

    @property
    def parked(self) -> bool:
        """Alive, nothing armed, waiting with no timeout."""
        with self._cond:
            return (self.thread is not None and self.thread.is_alive() and not self._armed
                    and self._looking is None and self._wake_at == math.inf)

    def arm(self, watch: LoopWatch, first_look_s: float) -> None:
        """Look at ``watch`` from ``first_look_s`` on; start the thread if it is not running."""
        with self._cond:
            at = time.monotonic() + first_look_s
            self._armed[watch] = at
            if self.thread is None or not self.thread.is_alive():
                self._closing = False
                self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self.thread.start()
                self.starts += 1
            elif at < self._wake_at:
                self._cond.notify_all()  # parked, or asleep until later: look again

    def disarm(self, watch: LoopWatch) -> None:
        """Look at ``watch`` no more; returns once no look of it is under way. Not woken for
        this: the thread parks at its next wake-up if nothing else is armed."""
        with self._cond:
            self._armed.pop(watch, None)
            if threading.current_thread() is self.thread:
                return
            while self._looking is watch:
                self._cond.wait()

    def close(self, timeout: float) -> bool:
        """End a dedicated thread; True once it has exited (joined, at most ``timeout``)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread = self.thread
        if thread is None or thread is threading.current_thread():
            return thread is None
        thread.join(timeout)
        return not thread.is_alive()

    def _run(self) -> None:
        cond = self._cond
        with cond:
            while not self._closing:
                now = time.monotonic()
                for watch in [w for w, at in self._armed.items() if at <= now]:
                    if watch not in self._armed:  # disarmed during the previous look
                        continue
                    self._looking = watch
                    cond.release()
                    try:
                        wait = watch._look()
                    finally:
                        cond.acquire()
                        self._looking = None
                    if watch in self._armed:
                        if wait is None:
                            del self._armed[watch]
                        else:
                            self._armed[watch] = time.monotonic() + wait
                    cond.notify_all()  # a disarm() waiting for this look
                self._wake_at = min(self._armed.values(), default=math.inf)
                if self._closing:
                    break
                if self._wake_at == math.inf:
                    cond.wait()  # parked: until arm() or close()
                else:
                    cond.wait(max(self._wake_at - time.monotonic(), 0.0))
                self.wakeups += 1


_SHARED: _Watchdog | None = None
_SHARED_LOCK = threading.Lock()


def shared_watchdog() -> _Watchdog:
    """The process's one watchdog for ``shared`` watches; its thread starts at the first arm."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = _Watchdog(WATCHDOG_THREAD_NAME)
        return _SHARED


def is_watchdog_thread(thread: threading.Thread) -> bool:
    """``thread`` is the shared watchdog's (busmon's own: never a leftover of watched code)."""
    dog = _SHARED
    return dog is not None and thread is dog.thread


def _forget_shared() -> None:
    """In a forked child the shared thread does not exist (and its lock may be held)."""
    global _SHARED, _SHARED_LOCK
    _SHARED, _SHARED_LOCK = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_shared)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _stall(seen: _Seen | None, start: float, bus: float, phase: str) -> Stall:
    duration = round(bus * 1e3, 3)
    if seen is None or not seen.busy:  # never seen inside a callback
        return Stall(phase, start, duration, "", "unknown", ())
    return Stall(seen.phase, start, duration, seen.blocking, seen.component, seen.stack, seen.busy)


class _Tally:
    """The watchdog's samples of one stall: the most frequent known blocking frame names it
    (ties: the earliest), so a long stall is named by where its time went."""

    def __init__(self) -> None:
        self.restart(-1.0)

    def restart(self, start: float) -> None:
        self.start = start
        self.phase = ""
        self.ticks = 0
        self.counts: dict[str, int] = {}
        self.details: dict[str, tuple[str, tuple[str, ...]]] = {}

    def add(self, blocking: str, component: str, stack: tuple[str, ...], phase: str) -> None:
        """One stack seen inside a callback; the first one's phase is the stall's."""
        if not self.counts:
            self.phase = phase
        if blocking in self.counts or len(self.counts) < MAX_DISTINCT:
            self.counts[blocking] = self.counts.get(blocking, 0) + 1
            self.details.setdefault(blocking, (component, stack))

    def seen(self) -> _Seen:
        best = max(self.counts, key=lambda b: (b != "", self.counts[b]))
        component, stack = self.details[best]
        return _Seen(self.start, self.phase, best, component, stack, sum(self.counts.values()))
