"""busmon's verdict around any code, on the caller's own event loop: no arena, no bus.

``busmon play`` drives a bus on busmon's arena loop; a test suite runs its code on a loop of its
own (pytest-asyncio's, anyio's), or on none. :class:`Watch` takes the same measurements there
with the same engine (``Census`` for the baseline by identity, ``SettleWatch`` and
``ResourceWatch`` to wait for exits and classify, ``IgnoreRules``): a baseline before the code,
then settle and judge after it. :class:`watch` wraps that as a context manager and decorator::

    async with watch(on_leak="raise") as w:
        nc = await nats.connect(url)
        await nc.close()
    w.verdict            # "clean" | "leaked"
    w.leftovers          # every candidate: leaked, exited (lingered), ignored…
    w.result.stalls      # times the loop ran nothing for stall_ms (100 ms) or more, and who held it

On a loop, the loop's watchdog (:class:`~busmon.probes.observe.loopwatch.LoopWatch`, the one ``busmon play``
uses) runs from the baseline to the verdict: a heartbeat timer on the loop and a thread that
reads the loop thread's stack while a beat is late. Both are busmon's: the thread is the
process's one shared watchdog, started (once) before the first baseline and parked between
watches, and the timer is cancelled at the verdict, so neither is ever one of the code's leftovers. Blocking the loop is not a leak: a stall warns
(:class:`StallWarning`) unless ``fail_on_stall_ms`` says one that long fails (:class:`StallError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import inspect
import time
import warnings
import weakref
from typing import Any, Callable, Iterable, TypeVar

from busmon.probes.observe.census import Census, running_loop
from busmon.probes.observe.children import ProcessOwners
from busmon.probes.observe.fds import UNSUPPORTED_NOTE, SocketOwners
from busmon.probes.verdict.ignore import IgnoreRules
from busmon.probes.observe.loopwatch import LoopWatch, Stall, is_watchdog_thread
from busmon.probes.model import Leftover
from busmon.probes.verdict.resources import Attribution, ResourceWatch
from busmon.probes.verdict.settle import SettleOutcome, SettleWatch
from busmon.probes.verdict.watch_result import FAILING, WatchResult
from busmon.probes.observe.thread_births import ThreadBirths
from busmon.probes.observe.tracking import TaskTracker
from busmon.probes.watching.watch_options import KINDS, WatchOptionError, WatchOptions, check_options

F = TypeVar("F", bound=Callable[..., Any])

class LeakError(AssertionError):
    """Raised by ``watch(on_leak="raise")``: the code left something running (the message also
    has the stalls, when the loop had some)."""

    def __init__(self, result: WatchResult) -> None:
        super().__init__(result.report())
        self.result = result


class StallError(AssertionError):
    """Raised by ``watch(fail_on_stall_ms=...)``: the watched code blocked its event loop at least
    that long (the message names the blocking call of each stall, with its stack)."""

    def __init__(self, result: WatchResult) -> None:
        super().__init__(result.stall_report())
        self.result = result


class LeakWarning(UserWarning):
    """A leak told, not raised: by ``watch()`` (``on_leak="warn"``, its default) and by the pytest
    plugin under ``busmon_on_leak = warn``. ``-W error`` turns it into a failure; filter it with
    ``-W ignore::busmon.LeakWarning``."""


class StallWarning(UserWarning):
    """The watched code blocked its event loop for ``stall_ms`` (100 ms) or more, told, not
    raised: by ``watch()`` and by the pytest plugin, unless ``fail_on_stall_ms`` makes that stall
    a failure. ``-W error`` turns it into one; ``-W ignore::busmon.StallWarning`` hides it;
    ``stall_ms=0`` does not watch the loop at all."""


class Watch:
    """One baseline and one verdict, on a given event loop (or none).

    :meth:`start` takes the baseline (and, on a loop, notes who creates tasks, sockets and
    child processes there); :meth:`settle` (on the loop) or :meth:`settle_blocking` (from outside
    it) waits for what appeared since to exit, then judges. The loop may belong to someone else
    (a test's): busmon only adds a task factory and wraps a few of the loop's instance methods
    between the two, and puts them back.
    """

    def __init__(self, options: WatchOptions | None = None, label: str = "",
                 exclude: Callable[[asyncio.AbstractEventLoop], Iterable[asyncio.Task]] | None = None,
                 freeze_baseline: bool = True, own: weakref.WeakSet | None = None) -> None:
        self.options = options or WatchOptions()
        #: the caller's own tasks as a live set (busmon run's agent: a task of its own started
        #: while a verdict waits is its, not the program's); None: ``exclude`` is asked once
        self._own = own
        #: move the baseline's objects out of the collector's reach until the verdict (a test's
        #: few seconds); a service watched for hours keeps collecting them (``busmon run``)
        self.freeze_baseline = freeze_baseline
        self.label = label
        #: the tasks of the harness that runs the code (anyio's runner task): never the code's
        self._exclude = exclude
        self.loop: asyncio.AbstractEventLoop | None = None
        self.baseline: Census | None = None
        self.started_at = 0.0
        self.notes: list[str] = []
        self._tracker: TaskTracker | None = None
        self._sockets: SocketOwners | None = None
        self._processes: ProcessOwners | None = None
        self._births = ThreadBirths()
        self._loopwatch: LoopWatch | None = None
        self._stall_ms: int | None = None             # the watchdog's threshold, when it ran
        self._stalls: tuple[Stall, ...] = ()
        self._frozen = False
        self._at_end: dict[str, int] = {}
        self._settling: SettleWatch | None = None  # the settle under way, if any

    def judges(self, kind: str) -> bool:
        return kind in self.options.judge

    # -- baseline ----------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """The baseline: everything alive now (the tasks and timers of ``loop``, by default the
        running one) is not the code's. On a loop, its watchdog starts first, so its thread is
        in the baseline; the baseline itself is busmon's own work, never a stall."""
        self.loop = loop or running_loop()
        if self.loop is not None and self.loop.is_closed():
            self.notes.append("tasks and timers not judged: the event loop was closed")
            self.loop = None
        self._stalls, self._stall_ms = (), None
        if self.loop is not None and (threshold := self.options.watchdog_ms()) is not None:
            self._stall_ms = threshold
            self._loopwatch = LoopWatch(self.loop, stall_ms=threshold, shared=True)
            self._loopwatch.set_phase("run")
            # a test's loop runs in turns (each async fixture, the body, the verdict), also after a
            # check() from inside the body: the time it is not running is no stall
            self._loopwatch.start(track_runs=True)
        with self._own_work():
            if self.judges("threads"):
                self._births.install(trace_starts=self.options.trace_creation)
            self.baseline = Census.take(self.loop)
            self.started_at = time.monotonic()
            if self.loop is not None:
                self._instrument(self.loop)
            if not self.freeze_baseline or not gc.isenabled() or gc.get_freeze_count():
                return
            # the baseline's objects out of the collector's reach until the verdict: its GC then
            # scans only what the code created (milliseconds, not a whole test process's heap)
            gc.freeze()
            self._frozen = True

    def _own_work(self) -> contextlib.AbstractContextManager[None]:
        """busmon's own blocking work on the watched loop (scans, GC): no stall of the code's."""
        lw = self._loopwatch
        return lw.own_work() if lw is not None else contextlib.nullcontext()

    def _instrument(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.judges("tasks"):
            self._tracker = TaskTracker(trace_creation=self.options.trace_creation)
            self._tracker.install(loop, count_existing=False)
        if self.judges("sockets"):
            self._sockets = SocketOwners()
            self._sockets.install(loop)
        if self.judges("processes"):
            self._processes = ProcessOwners()
            self._processes.install(loop)

    def stop(self) -> None:
        """Put the loop back as it was (idempotent); called by the verdict, or instead of it.
        The watchdog is disarmed here (its shared thread parks), its timer cancelled."""
        self._stop_loopwatch()
        for part in (self._tracker, self._sockets, self._processes, self._births):
            if part is not None:
                part.uninstall()
        if self._frozen:
            gc.unfreeze()
            self._frozen = False

    def thaw(self) -> None:
        """Let the collector reach the baseline's objects again, the watch going on (a verdict
        that keeps watching, for what a later one or a live figure needs)."""
        if self._frozen:
            gc.unfreeze()
            self._frozen = False

    def set_phase(self, phase: str) -> None:
        """Name what runs from now on, for the stalls seen: ``run`` (the watched code), or a
        harness's own step (``setup``, ``teardown``: a test's fixtures)."""
        if self._loopwatch is not None:
            self._loopwatch.set_phase(phase)

    def _stop_loopwatch(self) -> None:
        """Disarm the watchdog and keep the stalls it saw since the baseline."""
        lw, self._loopwatch = self._loopwatch, None
        if lw is not None:
            lw.stop()
            self._stalls = tuple(lw.stalls_since(self.started_at))

    # -- verdict -----------------------------------------------------------------------

    def _settle_watch(self, loop: asyncio.AbstractEventLoop | None, own: weakref.WeakSet,
                      late: bool = True, at: tuple[Census, float] | None = None) -> SettleWatch:
        assert self.baseline is not None, "start() first"
        closed_at = time.monotonic() if at is None else at[1]
        if self._loopwatch is not None:
            self._loopwatch.set_phase("settle")
        if at is not None:
            at_end = at[0]
        else:
            with self._own_work():
                at_end = Census.take(loop)
        self._at_end = self._plain_count(at_end, own)
        resources = None
        if any(self.judges(k) for k in ("sockets", "fds", "processes")):
            resources = ResourceWatch(self.baseline.fds, self.baseline.children,
                                      Attribution(self._sockets, self._processes), kinds=frozenset(self.options.judge))
            resources.accept_late = late
        tracker = self._tracker
        return SettleWatch(self.baseline, at_end, closed_at, timeout_s=self.options.settle_timeout_s,
                           poll_ms=self.options.poll_ms, exclude=own,
                           sites=tracker.sites if tracker is not None else None, tracker=tracker,
                           since=self.started_at, resources=resources, loop=loop,
                           kinds=frozenset(self.options.judge), unfreeze=False, final_census=False,
                           python_natives=self._births.native_ids, rules=self._rules(), ended="the end",
                           idle_pool=self._births.idle_pool, late=late)

    def _plain_count(self, at_end: Census, own: weakref.WeakSet) -> dict[str, int]:
        """What counting right at the end would have said: new tasks and threads alive."""
        assert self.baseline is not None
        tasks, threads, _ = at_end.new_since(self.baseline)
        threads = [t for t in threads if not is_watchdog_thread(t)]
        if self.loop is None or not self.judges("tasks"):  # tasks not judged: not counted either
            return {"threads": len(threads)}
        return {"tasks": len([t for t in tasks if t not in own]), "threads": len(threads)}

    async def settle(self, keep_watching: bool = False, judge: Callable[[], None] | None = None,
                     live: bool = False, at: tuple[Census, float] | None = None) -> WatchResult:
        """Wait on the watched loop (it must be the running one) for what appeared since the
        baseline to exit, or the deadline; then judge. ``keep_watching``: the baseline and the
        loop's instruments stay for a later verdict (``busmon attach``'s ``v``, any number of
        times); otherwise the loop is put back as it was. ``judge`` runs after the verdict's GC,
        while only what appeared since the baseline is outside the frozen generation (when the
        baseline was frozen): ``busmon run --retained``'s census of what is still alive.
        ``live``: the code goes on meanwhile (a verdict at a mark, or a dashboard's): only what is
        alive now is judged, not what it starts while busmon waits; ``at``: the census that says
        what was alive then, and when (taken at the moment asked for, before this coroutine ran)."""
        loop = asyncio.get_running_loop()
        if self.loop is not None and loop is not self.loop:
            raise RuntimeError("settle() must run on the loop the baseline was taken on")
        try:
            own: weakref.WeakSet = self._own if self._own is not None else weakref.WeakSet(self._harness(loop))
            if (me := asyncio.current_task()) is not None:
                own.add(me)
            watch = self._settling = self._settle_watch(self.loop, own, late=not live, at=at)
            own.add(watch.start())
            outcome = await watch.verdict(self._rules(), judge=judge, own_work=self._own_work)
        finally:
            self._settling = None
            if keep_watching:
                lw = self._loopwatch
                self._stalls = tuple(lw.stalls_since(self.started_at)) if lw is not None else self._stalls
                if lw is not None:
                    lw.set_phase("run")
            else:
                self.stop()
        return self._result(outcome)

    def cut_short(self) -> bool:
        """Stop waiting for leftovers now (a person's Ctrl-C): what is still there is judged as
        it is, at once. False when no settle is under way."""
        settling = self._settling
        if settling is None:
            return False
        settling.deadline = min(settling.deadline, time.monotonic())
        return True

    def settle_blocking(self) -> WatchResult:
        """:meth:`settle` from outside the loop: the watched loop, idle now, is run until the
        verdict (a test's loop between its body and its teardown); with no loop, this thread
        waits."""
        if self.loop is not None and self.loop.is_closed():
            self.notes.append("tasks and timers not judged: the event loop was closed before the verdict")
            self.loop = None
        if self.loop is not None:
            return self.loop.run_until_complete(self.settle())
        try:
            watch = self._settle_watch(None, weakref.WeakSet())
            outcome = watch.verdict_blocking(self._rules())
        finally:
            self.stop()
        return self._result(outcome)

    def _harness(self, loop: asyncio.AbstractEventLoop) -> list[asyncio.Task]:
        return list(self._exclude(loop)) if self._exclude is not None else []

    def _rules(self) -> IgnoreRules:
        o = self.options
        return IgnoreRules(o.ignore_tasks, o.ignore_threads, o.ignore_sockets, o.ignore_processes)

    def _result(self, outcome: SettleOutcome) -> WatchResult:
        notes = list(self.notes)
        assert self.baseline is not None
        if self.baseline.fds is None and (self.judges("sockets") or self.judges("fds")):
            notes.append(UNSUPPORTED_NOTE)
        leaked = any(x.state in FAILING for x in outcome.leftovers)
        return WatchResult("leaked" if leaked else "clean", outcome.leftovers, self.options.settle_timeout_s,
                           round(outcome.settle_ms, 2), round(outcome.verdict_ms, 2), self._at_end,
                           self.label, tuple(notes), outcome.settled, self._stalls, self._stall_ms,
                           self.options.fail_on_stall_ms)


class watch:
    """busmon's verdict around a block or a function: ``with``, ``async with``, or a decorator.

    ``watch(settle_timeout_s=2.0, ignore_tasks=(), ignore_threads=(), ignore_sockets=(),
    ignore_processes=(), judge=KINDS, trace_creation=False, on_leak="warn", stall_ms=100,
    fail_on_stall_ms=None)``

    After the block: :attr:`verdict` (``"clean"`` / ``"leaked"``), :attr:`leftovers`,
    :attr:`result` (the whole :class:`WatchResult`). On a leak, ``on_leak`` says what happens:
    ``"warn"`` (a :class:`LeakWarning` with the report), ``"raise"`` (:class:`LeakError`),
    ``"ignore"``. A block that raises is not judged: its exception is what matters.

    With ``async with`` (or an async function) the loop is watched too: a time it ran nothing
    for ``stall_ms`` or more (``0``: not watched) is a stall, in ``result.stalls`` with the call
    that blocked it. Stalls are not leaks and ``on_leak`` does not apply to them: each verdict
    with stalls warns (:class:`StallWarning`), or raises :class:`StallError` when one lasted at
    least ``fail_on_stall_ms`` (``0``: any stall). A leak that raises comes first; its
    :class:`LeakError` then tells the stalls too.

    In a coroutine use ``async with``: the verdict waits on the running loop, so what the block
    started can still finish. A plain ``with`` judges threads, sockets and child processes.
    As a decorator each call is watched afresh; :attr:`result` is the last call's.
    """

    def __new__(cls, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        if fn is None:
            return super().__new__(cls)
        if not callable(fn):
            raise TypeError(f"watch(): takes options as keywords (e.g. settle_timeout_s=5), got {fn!r}")
        return cls(**options)(fn)  # @watch without parentheses: the default options

    def __init__(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> None:
        self.options = WatchOptions(**check_options(options, "watch()"))
        self.result: WatchResult | None = None
        self._watch: Watch | None = None

    @property
    def verdict(self) -> str | None:
        return self.result.verdict if self.result is not None else None

    @property
    def leftovers(self) -> tuple[Leftover, ...]:
        return self.result.leftovers if self.result is not None else ()

    def _begin(self, label: str) -> Watch:
        self.result = None
        self._watch = Watch(self.options, label=label)
        return self._watch

    def _end(self, result: WatchResult) -> None:
        self.result = result
        if not result.clean and self.options.on_leak == "raise":
            raise LeakError(result)
        if not result.clean and self.options.on_leak == "warn":
            warnings.warn(LeakWarning(result.report()), stacklevel=3)
        if result.failing_stalls:
            raise StallError(result)
        if result.stalls:
            warnings.warn(StallWarning(result.stall_report()), stacklevel=3)

    # -- with ----------------------------------------------------------------------------

    def __enter__(self) -> watch:
        if running_loop() is not None:
            raise RuntimeError("watch(): inside a coroutine use 'async with watch()': a blocking wait "
                               "would stop the event loop that what the block started needs to finish")
        self._begin("").start(None)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        w, self._watch = self._watch, None
        assert w is not None
        if exc_type is not None:
            w.stop()
            return
        self._end(w.settle_blocking())

    async def __aenter__(self) -> watch:
        self._begin("").start(asyncio.get_running_loop())
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        w, self._watch = self._watch, None
        assert w is not None
        if exc_type is not None:
            w.stop()
            return
        self._end(await w.settle())

    # -- decorator -------------------------------------------------------------------------

    def __call__(self, fn: F) -> F:
        label = getattr(fn, "__qualname__", repr(fn))
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                w = self._begin(label)
                w.start(asyncio.get_running_loop())
                try:
                    value = await fn(*args, **kwargs)
                except BaseException:
                    w.stop()
                    raise
                self._end(await w.settle())
                return value
            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            if running_loop() is not None:
                raise RuntimeError(f"watch(): {label} is called inside a coroutine; make it async "
                                   "or watch its caller with 'async with watch()'")
            w = self._begin(label)
            w.start(None)
            try:
                value = fn(*args, **kwargs)
            except BaseException:
                w.stop()
                raise
            self._end(w.settle_blocking())
            return value
        return run  # type: ignore[return-value]


__all__ = ["KINDS", "LeakError", "LeakWarning", "StallError", "StallWarning", "Watch", "WatchOptionError",
           "WatchOptions", "WatchResult", "watch"]
