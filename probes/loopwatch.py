"""How blocked the arena's event loop is, and who blocked it.

A watchdog thread posts a heartbeat callback to the watched loop every beat and
measures how long it waits to run (lag, per phase). When the heartbeat stops coming
back, the watchdog reads the loop thread's stack *while* it is stuck: read afterwards,
it would only show where the loop went next, not what held it.

Beats are posted (``call_soon_threadsafe``), not a ``call_later`` chain: a scheduled
timer costs a loop that has no other one 1.5-3% on a busy microbenchmark
(``_run_once`` peeks at the timer heap every iteration); a posted beat costs about
0.5% at the default rate (GIL hand-offs and a self-pipe write). Its lag is what an
outside event (I/O, another thread) waits for the loop.

Definitions (all times ``time.monotonic()``, comparable across threads):

* lag: from a beat's posting to its running, minus busmon's own work in between.
* free: the loop provably could run callbacks: it ran a beat, or the watchdog saw its
  thread waiting in the selector (so a late watchdog, or another thread holding the GIL
  while the loop idles, is not taken for a stall).
* stall: the loop not free for longer than ``stall_ms``, not counting time inside
  :meth:`LoopWatch.own_work`. It starts when the loop was last free and ends with the
  next beat; its duration is an upper bound on the block, at most about one beat too
  long (the block may have begun up to a beat later). Any block of at least ``stall_ms``
  is caught; one up to a beat shorter may be too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import linecache
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, NamedTuple, Sequence

from bus.deadline import short_where
from probes.histogram import LatencyHistogram

__all__ = ["DEFAULT_BEAT_MS", "DEFAULT_STALL_MS", "WATCHDOG_THREAD_NAME", "Frame", "LoopWatch",
           "Stall", "blocking_frame", "describe"]

DEFAULT_STALL_MS = 100
DEFAULT_BEAT_MS = 20
WATCHDOG_THREAD_NAME = "busmon.loop-watchdog"
#: innermost frames kept in a stall's stack
STACK_LIMIT = 24
#: stalls kept (the newest); a bus that stalls all the time needs no more to be judged
MAX_STALLS = 1000
#: distinct blocking frames counted per stall; later ones are ignored
MAX_DISTINCT = 32
#: stack samples per stall taken every beat; after that, one every SLOW_EVERY beats
FAST_SAMPLES = 50
SLOW_EVERY = 10
#: top-level modules where the loop dispatches or waits: never the one that blocked it
MACHINERY = frozenset({"asyncio", "threading", "selectors", "concurrent"})
#: busmon's own package: its frames wrap the bus's calls, so they are looked through
OWN_PACKAGE = __name__.partition(".")[0]


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
            return self.module.partition(".")[0]
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
    samples: int = 0           # stacks sampled during the stall (0: it was never seen live)

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
    """The loop thread waits in its selector, called by the loop itself: it runs no callback."""
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
    """What the watchdog saw since the latest beat; replaced whole, so readers need no lock."""

    start: float      # the last_beat this follows: which gap it is about
    since: float      # when the loop was last seen free in that gap (start if never)
    own_since: float  # own-work seconds at ``since``
    phase: str
    blocking: str
    component: str
    stack: tuple[str, ...]
    busy: int         # samples with the loop thread inside a callback since ``since``


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
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, beat_ms: int = DEFAULT_BEAT_MS,
                 stall_ms: int = DEFAULT_STALL_MS) -> None:
        if beat_ms <= 0 or stall_ms < 2 * beat_ms:
            # an idle gap is one beat plus wake-up time: a threshold nearer than that is noise
            raise ValueError(f"need 0 < beat_ms and stall_ms >= 2 * beat_ms, got {beat_ms}, {stall_ms}")
        self._loop = loop
        self._beat_s = beat_ms / 1000
        self._stall_s = stall_ms / 1000
        #: time.monotonic() of the latest beat (None before the first): read by the watchdog
        self.last_beat: float | None = None
        self.beats = 0
        #: stalls that were busmon's own work (not findings), and their total length
        self.own_stalls = 0
        self.own_stall_ms = 0.0
        #: long gaps between beats in which the loop was seen free (a late watchdog, or
        #: another thread holding the GIL): not stalls of the loop
        self.unconfirmed_stalls = 0
        self._phase = "idle"
        self._hists: dict[str, LatencyHistogram] = {}
        self._stalls: collections.deque[tuple[float, Stall]] = collections.deque(maxlen=MAX_STALLS)
        self._on = False
        self._gen = 0  # a beat posted before the latest start()/stop() finds a newer one: ignored
        self._outstanding = False  # a beat is posted and has not run: post no other
        self._ident: int | None = None
        self._paused = False
        self._own_lock = threading.Lock()
        #: (depth, outermost entry time, own seconds before it): swapped whole, read lock-free
        self._own: tuple[int, float, float] = (0, 0.0, 0.0)
        #: (last_beat, own seconds then): one tuple, so the watchdog reads a consistent pair
        self._mark: tuple[float, float] | None = None
        self._seen: _Seen | None = None
        self._halt = threading.Lock()  # held while the watchdog should run (see start)
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------------------

    def start(self) -> None:
        """Post the first beat (from any thread; raises on a closed loop) and start the watchdog."""
        if self._on:
            return
        self.last_beat = self._mark = None
        self._gen += 1
        self._outstanding = True
        now = time.monotonic()
        self._loop.call_soon_threadsafe(self._beat, self._gen, now, self._own_total(now))
        self._on = True
        self._halt = threading.Lock()
        self._halt.acquire()  # released by stop(), which wakes the watchdog at once
        self._thread = threading.Thread(target=self._watch, args=(self._halt, self._gen),
                                        name=WATCHDOG_THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        """End the heartbeat and the watchdog. Never touches the loop, so never raises:
        a beat still queued there finds a newer generation and does nothing."""
        if self._on:
            self._on = False
            self._gen += 1
            self._halt.release()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if not thread.is_alive():
                self._thread = None
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
        self.unconfirmed_stalls = 0

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
        last = mark[0]
        now = time.monotonic()
        seen = self._seen_for(last)
        since, own_since = (seen.since, seen.own_since) if seen else mark
        bus = now - since - (self._own_total(now) - own_since)
        if bus <= self._stall_s:
            return None
        return _stall(seen, since, bus, self._phase)

    def _seen_for(self, last: float) -> _Seen | None:
        seen = self._seen
        return seen if seen is not None and seen.start == last else None

    # -- the loop thread -------------------------------------------------------------------

    def _beat(self, gen: int, posted: float, own_at_post: float) -> None:
        """Record how long this beat waited; close the stall it ends, if any."""
        if gen != self._gen:
            return
        now = time.monotonic()
        prev_mark = self._mark
        own = self._own_total(now)
        self._mark = (now, own)
        self.last_beat = now
        self.beats += 1
        if self._ident is None:
            self._ident = threading.get_ident()
        if self._paused:  # the loop was stopped meanwhile: the gap is not a stall
            self._paused = False
        elif prev_mark is not None:
            lag = now - posted - (own - own_at_post)
            hist = self._hists.get(self._phase)
            if hist is None:
                hist = self._hists[self._phase] = LatencyHistogram()
            hist.record(int(lag * 1e9) if lag > 0 else 0)
            if now - prev_mark[0] > self._stall_s:
                self._close(prev_mark, now, own)
        self._outstanding = False

    def _close(self, prev_mark: tuple[float, float], now: float, own: float) -> None:
        """A long gap ended: a stall of the bus, of busmon's own work, or no stall at all."""
        prev, mark = prev_mark
        seen = self._seen_for(prev)
        since, own_since = (seen.since, seen.own_since) if seen else prev_mark
        bus = now - since - (own - own_since)
        if bus > self._stall_s:
            self._stalls.append((now, _stall(seen, since, bus, self._phase)))
        elif now - prev - (own - mark) > self._stall_s:
            self.unconfirmed_stalls += 1  # the loop was seen free: the watchdog was late
        else:
            self.own_stalls += 1
            self.own_stall_ms += round((now - prev) * 1e3, 3)

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

    def _watch(self, halt: threading.Lock, gen: int) -> None:
        """Every beat: if the loop is past the threshold, sample its stack; then post the next
        beat if the last one came back.

        Sampling comes first: when the loop held the GIL (a long C call), this thread only
        wakes once the call returns, and the loop thread is then still in the caller's frame.
        Holds no lock the loop thread takes, and keeps no frame object past the copy.
        """
        tally = _Tally()
        # a raw lock, not an Event: one C call per wait keeps the GIL traffic per beat small
        while not halt.acquire(timeout=self._beat_s):
            loop = self._loop
            if loop.is_closed():
                return
            if not loop.is_running():
                self._paused = True
                continue
            now = time.monotonic()
            self._check(now, tally)
            if not self._outstanding:
                self._outstanding = True
                try:
                    loop.call_soon_threadsafe(self._beat, gen, now, self._own_total(now))
                except RuntimeError:  # closed since the check above
                    return
                after = time.monotonic()
                if after - now > self._beat_s:  # the loop took the GIL while our write let go
                    self._check(after, tally)

    def _check(self, now: float, tally: _Tally) -> None:
        """Sample the loop thread's stack if it has not been free for longer than the threshold."""
        mark = self._mark
        if mark is None or self._own[0]:
            return
        last = mark[0]
        if tally.start != last:
            tally.restart(last, *mark)
        if now - tally.since - (self._own_total(now) - tally.own_since) <= self._stall_s:
            return
        tally.ticks += 1
        if tally.ticks > FAST_SAMPLES and tally.ticks % SLOW_EVERY:
            return  # a long stall: its name is settled, sample it less often
        at = time.monotonic()
        frame = sys._current_frames().get(self._ident or -1)
        frames = _walk(frame)
        del frame
        if self._mark is not mark or not frames:
            return  # the stall ended while we looked: this stack is not its
        if loop_is_idle(frames):  # free after all: whatever comes next starts from here
            tally.restart(last, at, self._own_total(at))
        else:
            tally.add(frames, self._phase)
        self._seen = tally.seen()


def _stall(seen: _Seen | None, since: float, bus: float, phase: str) -> Stall:
    duration = round(bus * 1e3, 3)
    if seen is None or not seen.busy:  # never seen live: it only just made the threshold
        return Stall(phase, since, duration, "", "unknown", ())
    return Stall(seen.phase, since, duration, seen.blocking, seen.component, seen.stack, seen.busy)


class _Tally:
    """The watchdog's samples of one stall: the most frequent known blocking frame names it
    (ties: the earliest), so a long stall is named by where its time went."""

    def __init__(self) -> None:
        self.restart(-1.0, -1.0, 0.0)

    def restart(self, start: float, since: float, own_since: float) -> None:
        self.start, self.since, self.own_since = start, since, own_since
        self.phase = ""
        self.ticks = 0
        self.counts: dict[str, int] = {}
        self.details: dict[str, tuple[str, tuple[str, ...]]] = {}

    def add(self, frames: list[Frame], phase: str) -> None:
        """One stack seen busy; the first one's phase is the stall's (the one it started in)."""
        if not self.counts:
            self.phase = phase
        blocking, component = describe(frames)
        if blocking in self.counts or len(self.counts) < MAX_DISTINCT:
            self.counts[blocking] = self.counts.get(blocking, 0) + 1
            if blocking not in self.details:
                self.details[blocking] = (component, tuple(f.where() for f in frames))

    def seen(self) -> _Seen:
        busy = sum(self.counts.values())
        if not busy:
            return _Seen(self.start, self.since, self.own_since, self.phase, "", "unknown", (), 0)
        best = max(self.counts, key=lambda b: (b != "", self.counts[b]))
        component, stack = self.details[best]
        return _Seen(self.start, self.since, self.own_since, self.phase, best, component, stack,
                     busy)
