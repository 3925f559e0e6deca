"""One event loop of the program, watched from its start to the verdict.

The same engine as ``watch()`` and the pytest plugin (:class:`~busmon.probes.watching.watch.Watch`:
the census by identity, the task and thread creation sites, sockets and child processes with
their owners, the loop's watchdog, settle): a baseline when the program's main coroutine
starts (or at a mark, or after a delay), a phase snapshot at every mark, and at shutdown the
naive count (what counting right when ``main()`` returned would have said), the wait for what
is still exiting, and the verdict, as a :class:`~busmon.probes.model.RunResult` so that every
report, the recording and the dashboard read it as they read a played run.

The baseline's objects are frozen out of the garbage collector's reach until the verdict, as
``watch()`` does: the verdict's collection then scans only what came since (10,000 tasks just
ended: ~1 ms, not ~30 ms). What that holds back is bounded by what was alive at the baseline,
and only its cyclic garbage (reference counting frees the rest as ever).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
import time
import types
import weakref
from dataclasses import replace
from typing import Any, Callable

from busmon.probes.model import PhaseSnapshot, PhaseStarted, RunFinished, RunResult, Sample
from busmon.probes.observe.census import Census, components_of_tasks, components_of_threads, os_thread_count
from busmon.probes.observe.components import package_of, task_component
from busmon.probes.observe.fds import identities, new_sockets
from busmon.probes.observe.heap_census import take_census
from busmon.probes.observe.process import rss_mb
from busmon.probes.verdict.watch_result import WatchResult
from busmon.probes.watching.watch import Watch
from busmon.probes.watching.watch_options import KINDS, WatchOptions

from busmon.probes.agent.config import AgentConfig

#: busmon's measuring code: its coroutines are never the program's objects
_PROBES_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
#: the note of a verdict whose wait a Ctrl-C cut short
CTRL_C = "Ctrl-C while busmon waited for leftovers to exit: judged then, not at the settle deadline"
#: rows of retained objects reported (--retained), the largest
RETAINED_ROWS = 15
#: the phase snapshots kept for the report (the baseline and the last ones)
MAX_PHASES = 1000
#: the phase names busmon gives a program's life (the marks are the program's own)
BASELINE, SHUTDOWN, SETTLE = "baseline", "shutdown", "settle"


class LoopVerdict:
    """Baseline, marks and verdict for one loop; every method runs in that loop's thread."""

    def __init__(self, config: AgentConfig, loop: asyncio.AbstractEventLoop, name: str,
                 emit: Callable[[Any], None]) -> None:
        self.config = config
        self.loop = loop
        self.name = name                      # the run's name: the program, and the loop's thread
        self.emit = emit
        #: where a dashboard's own verdict (v) goes: to it only, not to busmon run's report
        self.to_dashboard: Callable[[Any], None] | None = None
        self.t0 = time.monotonic()
        self.in_main_thread = threading.current_thread() is threading.main_thread()
        #: --retained: the main thread's loop only (freezing is process-wide)
        self.counts_retained = config.retained and self.in_main_thread
        self.retained_rows: list[dict[str, Any]] = []
        self.phases: list[PhaseSnapshot] = []
        self.own: weakref.WeakSet[asyncio.Task] = weakref.WeakSet()  # busmon's tasks on this loop
        self.watch: Watch | None = None
        self.judged = False                   # the verdict is out (at a mark, or at shutdown)
        self.notes: list[str] = []
        self._baseline_timer: asyncio.TimerHandle | None = None
        self.baseline_note = ""               # when the baseline was taken, if not at the start
        self.verdict_task: asyncio.Task | None = None
        self.verdicts = 0                     # asked for from an attached dashboard (v)
        self.phase = BASELINE                 # the phase under way (the last mark's)
        self.phases_dropped = 0
        #: the task running the program's main coroutine (its coroutine is the agent's wrapper
        #: around it), counted under the program's module, not busmon's
        self.main_task: asyncio.Task | None = None
        self.main_component = ""

    def _options(self) -> WatchOptions:
        c = self.config
        return WatchOptions(settle_timeout_s=c.settle_timeout_s, stall_ms=c.stall_ms,
                            trace_creation=c.trace_creation, ignore_tasks=c.ignore_tasks,
                            ignore_threads=c.ignore_threads, judge=self.kinds())

    def kinds(self) -> tuple[str, ...]:
        """What this loop's verdict judges. Threads, descriptors and child processes belong to
        the process, not to a loop: the main thread's loop judges them; a loop in another
        thread judges its own tasks and timers (else each loop would blame the others' threads)."""
        if self.in_main_thread:
            return KINDS
        return ("tasks", "timers")

    # -- baseline ----------------------------------------------------------------------------

    def set_main(self, task: asyncio.Task | None, coro: object) -> None:
        """The task that runs the program's main coroutine ``coro``: counted as the program's."""
        self.main_task = task
        frame = getattr(coro, "cr_frame", None)
        module = frame.f_globals.get("__name__", "") if frame is not None else ""
        self.main_component = package_of(module) if module else ""

    def begin(self) -> None:
        """The main coroutine is starting: the baseline, unless it is asked for later (then
        one now all the same, so a program that ends first is still judged, and says so)."""
        self.take_baseline()
        c = self.config
        if c.baseline_after_s is not None:
            self._baseline_timer = self.loop.call_later(c.baseline_after_s, self._delayed_baseline)
        elif c.baseline_at is not None:
            self.baseline_note = (f"the program had not marked {c.baseline_at!r} (--baseline-at) by the verdict: "
                                  "the baseline is the main coroutine's start")

    def _delayed_baseline(self) -> None:
        self._baseline_timer = None
        if not self.judged:
            self.take_baseline()
            self.baseline_note = f"baseline taken {self.config.baseline_after_s:g} s after the main coroutine started"

    def take_baseline(self) -> None:
        """Everything alive now is not the program's leftover: a new :class:`Watch`, started."""
        if self.watch is not None:
            self.watch.stop()
        self.watch = Watch(self._options(), label=self.name, own=self.own, freeze_baseline=True)
        self.emit(PhaseStarted(self.name, BASELINE, self.elapsed()))
        self.watch.start(self.loop)
        self.watch.set_phase(BASELINE)  # the loop's lag is told per phase: until the first mark, the baseline's
        self.phases = [p for p in self.phases if p.phase != BASELINE]
        self.snapshot(BASELINE, self.watch.baseline)
        self.phase = BASELINE

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    # -- marks -------------------------------------------------------------------------------

    def mark(self, name: str, opens: bool | None) -> None:
        """A mark of the program's: a moment (``opens`` None), a phase's start (True) or end
        (False). The baseline or the verdict may be asked for at it."""
        if self.judged:
            return
        if opens is not False:
            self.phase = name  # before it is said: a dashboard greeted in between has it in its history
            self.emit(PhaseStarted(self.name, name, self.elapsed()))
            if self.watch is not None:
                self.watch.set_phase(name)
        if opens is not True:
            self.snapshot(name)
        if self.config.baseline_at is not None and name == self.config.baseline_at and opens is not False:
            self.take_baseline()
            self.baseline_note = f"baseline taken at the mark {name!r}"
        elif name == self.config.verdict_at and opens is not True and self.verdict_task is None:
            now = self.census_now()  # what is alive at the mark: what the program starts next is its new work
            self.verdict_task = self.loop.create_task(self.judge(at=name, census=now), name="busmon.agent.verdict")
            self.own.add(self.verdict_task)

    def snapshot(self, phase: str, census: Census | None = None) -> PhaseSnapshot:
        """The counts at a phase boundary, by identity (busmon's own work: never a stall)."""
        watch = self.watch
        with watch._own_work() if watch is not None else contextlib.nullcontext():
            census = census or Census.take(self.loop)
            own = set(self.own)
            tasks = [t for t in census.tasks if t not in own]
            by_component = components_of_tasks(tasks, self._component)
            by_component.update(components_of_threads(census.threads))
            new_tasks = new_threads = sockets = processes = 0
            base = watch.baseline if watch is not None else None
            if base is not None:
                nt, nth, _ = census.new_since(base)
                new_tasks, new_threads = len([t for t in nt if t not in own]), len(nth)
                sockets = census.new_sockets(base)
                processes = len(census.children - base.children)
            lw = watch._loopwatch if watch is not None else None
            snap = PhaseSnapshot(phase, self.elapsed(), len(tasks), len(census.threads), os_thread_count(),
                                 by_component, new_tasks, new_threads, sockets, len(census.fds or ()),
                                 processes, rss_mb(), lw.lag(phase) if lw is not None else {})
        self.phases.append(snap)
        if len(self.phases) > MAX_PHASES:  # a program marking in a loop: the oldest marks go
            del self.phases[1]
            self.phases_dropped += 1
        self.emit(snap)
        return snap

    def _component(self, task: asyncio.Task) -> str:
        return self.main_component if task is self.main_task and self.main_component else task_component(task)

    # -- verdict -------------------------------------------------------------------------------

    def census_now(self) -> tuple[Census, float]:
        """Everyone alive at this instant, and when (busmon's own work: never a stall)."""
        with self.watch._own_work() if self.watch is not None else contextlib.nullcontext():
            return Census.take(self.loop), time.monotonic()

    async def judge(self, at: str = SHUTDOWN, interrupted: bool = False,
                    census: tuple[Census, float] | None = None) -> RunResult | None:
        """Wait for what appeared since the baseline to exit (or the deadline), then judge:
        the verdict goes out as a :class:`RunFinished`. Once per loop."""
        if self.judged or self.watch is None:
            return None
        self.judged = True
        if (me := asyncio.current_task()) is not None and me is not self.main_task:
            self.own.add(me)  # busmon's verdict task (at a mark, or on a loop closed by hand)
        if self._baseline_timer is not None:
            self._baseline_timer.cancel()
            self._baseline_timer = None
            self.baseline_note = (f"judged before the baseline asked for ({self.config.baseline_after_s:g} s in): "
                                  "the baseline is the main coroutine's start")
        if at == SHUTDOWN and self.config.verdict_at is not None:
            self.notes.append(f"the program never marked {self.config.verdict_at!r} (--verdict-at): judged at "
                              "shutdown instead")
        if at == SHUTDOWN:
            self.emit(PhaseStarted(self.name, SHUTDOWN, self.elapsed()))
            self.snapshot(SHUTDOWN)  # the naive count: right when main() returned
        self.emit(PhaseStarted(self.name, SETTLE, self.elapsed()))
        watch = self.watch
        # judged at a mark while metrics are served: the program goes on, and its tasks are still
        # counted by component for each scrape (the watch stops with the loop instead)
        keep = self.config.metrics_port is not None and at != SHUTDOWN
        result = await watch.settle(judge=self._count_retained if self.counts_retained else None,
                                    live=at != SHUTDOWN, at=census, keep_watching=keep)
        if keep:
            watch.thaw()
        self.snapshot(SETTLE)
        run = self.result(result, at, interrupted)
        self.emit(RunFinished(run))
        return run

    def _count_retained(self) -> None:
        """After the verdict's GC, before the baseline thaws: what the program made since the
        baseline and still holds, by type, the largest first (busmon's own left out)."""
        if self.watch is None or not self.watch._frozen:  # another loop's baseline holds the collector
            self.notes.append("--retained: not counted (a loop in another thread took its baseline first)")
            return
        # busmon's own coroutines judging right now (this verdict's chain of awaits)
        ours = [o for o in gc.get_objects() if type(o) is types.CoroutineType
                and o.cr_code.co_filename.startswith(_PROBES_DIR)]
        census = take_census([self, self.watch, *self.own, asyncio.current_task(), *ours], None, full=True,
                             extra=ours)
        rows = sorted(census.counts.items(), key=lambda kv: (-census.sizes.get(kv[0], 0), -kv[1]))
        self.retained_rows = [{"type": t, "count": n, "size_bytes": census.sizes.get(t, 0)}
                              for t, n in rows[:RETAINED_ROWS]]

    def cut_short(self, why: str = CTRL_C) -> None:
        """Stop waiting for leftovers: judge what is there now (and say why)."""
        if self.watch is not None and self.watch.cut_short():
            self.notes.append(why)

    # -- an attached dashboard's requests ----------------------------------------------------------

    def attached_baseline(self) -> None:
        """``b``: a GC in the program, then a new baseline (the shutdown verdict judges from it too)."""
        if self.judged:
            return
        with self.watch._own_work() if self.watch is not None else contextlib.nullcontext():
            gc.collect()
        self.take_baseline()
        self.baseline_note = "baseline taken from the dashboard (b)"

    async def judge_attached(self, census: tuple[Census, float] | None = None) -> RunResult | None:
        """``v``: settle and judge what appeared since the baseline and is still there; the
        baseline stays (another ``v`` later, and the verdict at shutdown, judge from it too)."""
        if self.judged or self.watch is None:
            return None
        if (me := asyncio.current_task()) is not None:
            self.own.add(me)
        self.verdicts += 1
        name = f"{self.name} · verdict {self.verdicts}"
        tell = self.to_dashboard or self.emit  # the dashboard's verdict is the dashboard's alone
        tell(PhaseStarted(self.name, SETTLE, self.elapsed()))
        result = await self.watch.settle(keep_watching=True, live=True, at=census)
        emit, self.emit = self.emit, tell
        try:
            snap = self.snapshot(SETTLE)
        finally:
            self.emit = emit
        self.phases.remove(snap)  # the shutdown report's phases are the program's own
        run = self.result(result, at="the dashboard (v)", interrupted=False)
        run = replace(run, name=name, phases=(*run.phases, snap))
        tell(RunFinished(run))
        return run

    def sockets_since_baseline(self, table: dict[int, str] | None) -> int:
        """Sockets open now that this loop's baseline lacked (any thread: the baseline is frozen)."""
        watch = self.watch
        base = watch.baseline if watch is not None else None
        if table is None or base is None or base.fds is None:
            return 0
        return new_sockets(identities(table), base.fds)

    def sample(self, proc: Any, sockets: int) -> Sample | None:
        """What the live panels show. The process's figures (``proc``, ``sockets``) were read by
        the listener's thread; only the task counts are read here, on the loop, from what the
        task factory keeps (a few microseconds: the program's loop does as little as can be)."""
        watch = self.watch
        if watch is None or self.loop.is_closed():
            return None
        tracker = watch._tracker
        new = tracker.counts() if tracker is not None else {}
        tasks = len(asyncio.all_tasks(self.loop))
        by_component = dict(new)
        base = tasks - sum(new.values())
        main = self.main_task
        if base > 0 and main is not None and self.main_component and not main.done():
            # the program's main coroutine: older than the baseline, and the program's own
            by_component[self.main_component] = by_component.get(self.main_component, 0) + 1
            base -= 1
        if base > 0:
            by_component["(before the baseline)"] = base
        lw = watch._loopwatch
        return Sample(run=self.name, phase=self.phase, t_s=round(self.elapsed(), 3), tasks=tasks,
                      threads=threading.active_count(), os_threads=proc.os_threads, by_component=by_component,
                      published=0, delivered=0, expected=0, publish_per_s=0.0, deliver_per_s=0.0, latency_ms={},
                      rss_mb=proc.rss_mb, cpu_percent=proc.cpu_percent, open_fds=proc.open_fds, sockets=sockets,
                      loop_lag_ms=lw.lag_now() if lw is not None else {},
                      stalls=len(lw.stalls_since(watch.started_at)) if lw is not None else 0)

    def result(self, w: WatchResult, at: str, interrupted: bool) -> RunResult:
        notes = [*([self.baseline_note] if self.baseline_note else []), *self.notes, *w.notes]
        if self.phases_dropped:
            notes.append(f"{self.phases_dropped:,} earlier marks left out of the phase table (it keeps {MAX_PHASES:,})")
        if not self.in_main_thread:
            notes.append("threads, sockets and child processes are judged with the main thread's loop "
                         "(they belong to the process)")
        if at == "the dashboard (v)":
            notes.append("judged from the dashboard (v); the program went on")
        elif at != SHUTDOWN:
            notes.append(f"judged at the mark {at!r} (--verdict-at), not at shutdown")
        if interrupted:
            notes.append("the main coroutine was cancelled by Ctrl-C (SIGINT): judged what was left then")
        base = next((p for p in self.phases if p.phase == BASELINE), None)
        end = next((p for p in reversed(self.phases) if p.phase == SETTLE), None)
        drift = {"tasks": end.new_tasks, "threads": end.new_threads} if end is not None else {}
        return RunResult(
            name=self.name, backend="program", verdict=w.verdict, phases=tuple(self.phases),
            settle_ms=w.settle_ms, leftovers=w.leftovers, delivery={}, throughput={}, drift=drift,
            verdict_ms=w.verdict_ms, stalls=tuple(s.as_dict() for s in w.stalls), notes=tuple(notes),
            memory={**({"rss_mb": {p.phase: p.rss_mb for p in self.phases}} if base is not None else {}),
                    **({"retained_since_baseline": list(self.retained_rows)} if self.counts_retained else {})},
        )


def loop_name(label: str) -> str:
    """A run's name: the program's, and the thread's when the loop is not the main thread's."""
    thread = threading.current_thread()
    return label if thread is threading.main_thread() else f"{label} (loop in thread {thread.name})"
