"""A measuring session: the arena, the task tracker and the sampler, playing runs.

Set up once before the first run, so the session's own machinery is part of
every baseline. ``sink`` receives every event (PhaseStarted, PhaseSnapshot,
Sample, RunFinished) on the arena thread: it must be thread-safe (a queue, or
Textual's ``call_from_thread``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from probes.arena import Arena
from probes.census import Census
from probes.model import RunResult, ScenarioResult
from probes.runner import RunContext, run_once
from probes.sampler import LiveState, Sampler
from probes.scenario import RunSpec, Scenario
from probes.tracking import TaskTracker


@dataclass(frozen=True, slots=True)
class RunFinished:
    result: RunResult


class Session:
    def __init__(self, scenario: Scenario, sink: Callable[[object], None], *,
                 probes_on: bool = True) -> None:
        self.scenario = scenario
        self.sink = sink
        self.probes_on = probes_on
        self.arena = Arena()
        self.tracker = TaskTracker(trace_creation=scenario.probes.trace_creation)
        self.state = LiveState()
        self.sampler = Sampler(self.tracker, self.state, sink, scenario.probes.interval_ms)
        self._sampler_task: asyncio.Task | None = None
        self.first_baseline: Census | None = None
        self.results: list[RunResult] = []
        self.current: RunContext | None = None

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
            self.tracker.install(asyncio.get_running_loop())
            self._sampler_task = asyncio.create_task(self.sampler.run(), name="busmon.sampler")

    def stop(self) -> None:
        if self.arena.loop is not None and self.arena.thread is not None:
            self.arena.run(self._teardown())
        self.arena.stop()

    async def _teardown(self) -> None:
        if self._sampler_task is not None:
            self._sampler_task.cancel()
            await asyncio.wait([self._sampler_task])
            self._sampler_task = None
        self.tracker.uninstall()

    async def play_runs(self, runs: Iterable[RunSpec], gate: Any = None) -> ScenarioResult:
        """Play ``runs`` one after another on the arena loop."""
        for spec in runs:
            ctx = RunContext(self.scenario, spec, self.tracker, self.state, self.sink, gate,
                             self.first_baseline)
            self.current = ctx
            self.sampler.reset_rates()
            result = await run_once(ctx)
            if self.first_baseline is None:
                self.first_baseline = ctx.baseline
            self.results.append(result)
            self.sink(RunFinished(result))
        return ScenarioResult(self.scenario.name, tuple(self.results))

    def play(self, gate: Any = None) -> ScenarioResult:
        """Play the scenario's runs, blocking the calling thread."""
        return self.arena.run(self.play_runs(self.scenario.runs, gate))
