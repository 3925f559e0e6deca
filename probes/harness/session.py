"""A measuring session: the arena, the task tracker and the sampler, playing runs.

Set up once before the first run, so the session's own machinery is part of
every baseline. ``sink`` receives every event (PhaseStarted, PhaseSnapshot,
Sample, RunFinished) on the arena thread: it must be thread-safe (a queue, or
Textual's ``call_from_thread``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import TYPE_CHECKING, Any, Callable, Iterable

from busmon.probes.harness.arena import Arena
from busmon.probes.observe.census import Census
from busmon.probes.model import RunFinished, RunResult, ScenarioResult
from busmon.probes.observe.children import ProcessOwners
from busmon.probes.observe.fds import SocketOwners
from busmon.probes.observe.loopwatch import LoopWatch
from busmon.probes.harness.runner import Instruments, RunContext, _uncancel, run_once
from busmon.probes.harness.sampler import LiveState, Sampler
from busmon.probes.harness.scenario import RunSpec, Scenario
from busmon.probes.observe.tracking import TaskTracker



if TYPE_CHECKING:
    from busmon.probes.harness.events import ArenaEvent


class Session:
    def __init__(self, scenario: Scenario, sink: Callable[[ArenaEvent], None], *,
                 probes_on: bool = True) -> None:
        self.scenario = scenario
        self.sink = sink
        self.probes_on = probes_on
        self.arena = Arena()
        self.tracker = TaskTracker(trace_creation=scenario.probes.trace_creation)
        self.state = LiveState()
        self.sampler = Sampler(self.tracker, self.state, sink, scenario.probes.interval_ms)
        self.instruments = Instruments()
        self.first_rss_mb: float | None = None
        self._sampler_task: asyncio.Task | None = None
        self.first_baseline: Census | None = None
        self.results: list[RunResult] = []
        self.current: RunContext | None = None
        self.interrupted = False
        self._play_task: asyncio.Task | None = None

    def __enter__(self) -> Session:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        self.arena.start()
        self.arena.run(self._setup())

    async def _setup(self) -> None:
        if self.probes_on:
            loop = asyncio.get_running_loop()
            self.tracker.install(loop)
            inst = self.instruments
            probes = self.scenario.probes
            # a stall that would fail the run must be seen, however short
            threshold = min(probes.stall_ms, probes.fail_on_stall_ms) if probes.fail_on_stall_ms else probes.stall_ms
            inst.loopwatch = LoopWatch(loop, stall_ms=max(1, int(threshold)))
            inst.loopwatch.start()
            inst.sockets, inst.processes = SocketOwners(), ProcessOwners()
            inst.sockets.install(loop)
            inst.processes.install(loop)
            self.sampler.loopwatch = inst.loopwatch
            self._sampler_task = asyncio.create_task(self.sampler.run(), name="busmon.sampler")

    def stop(self) -> None:
        """Tear down the probes and the arena, bounded: a wedged loop is named, never waited on."""
        if self.arena.loop is not None and self.arena.thread is not None:
            try:
                self.arena.run(self._teardown(), timeout=2.0, name="busmon.teardown")
            except (TimeoutError, concurrent.futures.TimeoutError):
                self.arena.refused.append("the probes' teardown (the event loop is blocked)")
        self.arena.stop()

    def interrupt(self) -> None:
        """Stop playing (thread-safe), as Ctrl-C does: a run in create…hold fails as
        'interrupted', is still closed, settled and judged; no further run starts."""
        self.arena.call_soon(self._interrupt)

    def _interrupt(self) -> None:
        self.interrupted = True
        ctx = self.current
        if ctx is not None:
            ctx.interrupted = True
        # close and settle are bounded and are what makes the partial report worth having:
        # let them finish (a gate waiting for a key press lets them go on); anywhere else, stop now
        if ctx is not None and getattr(ctx.gate, "waiting_for", None) is not None:
            ctx.gate.release()
        if self._play_task is not None and (ctx is None or not ctx.closing):
            self._play_task.cancel()

    async def _teardown(self) -> None:
        if self._sampler_task is not None:
            self._sampler_task.cancel()
            await asyncio.wait([self._sampler_task])
            self._sampler_task = None
        self.tracker.uninstall()
        inst = self.instruments
        for probe in (inst.sockets, inst.processes):
            if probe is not None:
                probe.uninstall()
        if inst.loopwatch is not None:
            inst.loopwatch.stop()

    async def play_runs(self, runs: Iterable[RunSpec], gate: Any = None, *,
                        stop_when_broker_down: bool = True) -> ScenarioResult:
        """Play ``runs`` one after another on the arena loop (until interrupted)."""
        self._play_task = asyncio.current_task()
        try:
            for spec in runs:
                if self.interrupted:
                    break
                ctx = RunContext(self.scenario, spec, self.tracker, self.state, self.sink, gate,
                                 self.first_baseline, self.instruments, self.first_rss_mb)
                self.current = ctx
                self.sampler.reset_rates()
                try:
                    result = await run_once(ctx)
                except asyncio.CancelledError:
                    if not self.interrupted:
                        raise
                    _uncancel()
                    break  # interrupted before the run had a bus: nothing to close or judge
                if self.first_baseline is None:
                    self.first_baseline = ctx.baseline
                    base = result.phase("baseline")
                    self.first_rss_mb = base.rss_mb if base else None
                self.results.append(result)
                self.sink(RunFinished(result))
                f = result.failure or {}
                if f.get("kind") == "config" or stop_when_broker_down and f.get("phase") == "create" and (
                        f.get("broker_down") or f.get("kind") == "refused"):
                    break  # every further run would fail the same way: say it once

        finally:
            self._play_task = None
        return ScenarioResult(self.scenario.name, tuple(self.results), interrupted=self.interrupted)

    def play(self, gate: Any = None) -> ScenarioResult:
        """Play the scenario's runs, blocking the calling thread."""
        return self.arena.run(self.play_runs(self.scenario.runs, gate))
