"""The dashboard's controller: starts the session, steps phases, shuts down cleanly.

Free of Textual, so its logic is testable on its own: the app calls it and
drains ``events`` on a timer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import queue
from dataclasses import dataclass, replace
from typing import Callable, Iterator

from busmon.bus.deadline import bounded, cancel_and_wait
from busmon.probes.harness.gate import AutoGate, StepGate
from busmon.probes.model import ScenarioResult
from busmon.probes.harness.scenario import RunSpec, Scenario
from busmon.probes.harness.session import Session
from busmon.tui.recording import tee


@dataclass(frozen=True, slots=True)
class PlaybackDone:
    """Every run of a scripted playback has finished (or the session stopped)."""

    result: ScenarioResult | None
    error: str | None = None


def endless_runs(template: RunSpec) -> Iterator[RunSpec]:
    """Interactive mode: after each settle, ``n`` starts a new run with a fresh bus."""
    for i in itertools.count(1):
        yield replace(template, name=f"run-{i}")


class Controller:
    def __init__(self, scenario: Scenario, *, interactive: bool,
                 record: Callable[[object], None] | None = None, recording_to: str = "") -> None:
        self.scenario = scenario
        self.interactive = interactive
        self.recording_to = recording_to  # --record's file, said in the header while recording
        self.events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._sink = tee(self.events.put, record)  # every event to the screen, and to --record
        self.session = Session(scenario, self._sink)
        self.session.instruments.roots.append(self.events)  # events on their way to the screen
        self.gate: StepGate | AutoGate = AutoGate()
        self._main: asyncio.Task | None = None
        self._future: concurrent.futures.Future | None = None
        self.stopped = False

    def start(self) -> None:
        self.session.start()
        self._future = self.session.arena.submit(self._play(), name="busmon.session")

    async def _play(self) -> None:
        self._main = asyncio.current_task()
        if self.interactive:
            self.gate = StepGate(asyncio.get_running_loop(), self._sink)
            runs: Iterator[RunSpec] | tuple[RunSpec, ...] = endless_runs(self.scenario.runs[0])
        else:
            runs = self.scenario.runs
        try:
            # a person stepping by hand may start the broker and press n again
            result = await self.session.play_runs(runs, self.gate, stop_when_broker_down=not self.interactive)
        except asyncio.CancelledError:
            self.events.put(PlaybackDone(None, "stopped"))
            raise
        self.events.put(PlaybackDone(result))

    def next_phase(self) -> bool:
        """Let the next phase start; False when nothing is waiting for a key press."""
        if isinstance(self.gate, StepGate) and self.gate.waiting_for is not None:
            self.gate.release()
            return True
        return False

    @property
    def waiting_for(self) -> str | None:
        return self.gate.waiting_for if isinstance(self.gate, StepGate) else None

    def set_interval(self, interval_ms: int) -> None:
        self.session.arena.call_soon(self.session.sampler.set_interval, interval_ms)

    def drain(self, limit: int = 10_000) -> list[object]:
        out = []
        try:
            while len(out) < limit:
                out.append(self.events.get_nowait())
        except queue.Empty:
            pass
        return out

    def shutdown(self) -> None:
        """Stop playback as Ctrl-C does: the run under way fails as 'interrupted' and is still
        closed, settled and judged, all within its deadlines; then stop the arena.

        Bounded whatever the bus does: past the close and settle deadlines the bus is closed
        directly (bounded again) and the arena is stopped, naming what refused.
        """
        if self.stopped:
            return
        self.stopped = True
        sc = self.scenario
        if self.session.arena.loop is not None and self._future is not None:
            self.session.interrupt()
            try:
                self._future.result(timeout=self.stop_bound())
            except BaseException:  # stopped, failed or still running: the bus is closed below
                pass
            try:
                self.session.arena.run(self._close_bus(), timeout=sc.deadlines.close_s + 2,
                                       name="busmon.shutdown")
            except BaseException:
                pass
        self.session.stop()

    def stop_bound(self) -> float:
        """How long stopping the playback may take: the close and settle deadlines, and a margin."""
        sc = self.scenario
        return sc.deadlines.close_s + sc.probes.settle_timeout_s + 5

    async def stop_playback(self) -> None:
        """Interrupt the playback and wait (on the caller's loop, bounded) until it has ended."""
        if self._future is None or self.session.arena.loop is None:
            return
        self.session.interrupt()
        try:
            await asyncio.wait_for(asyncio.wrap_future(self._future), self.stop_bound())
        except BaseException as exc:  # ended badly or not in time: shutdown() closes the bus
            if isinstance(exc, asyncio.CancelledError) and asyncio.current_task().cancelling():
                raise

    async def _close_bus(self) -> None:
        main = self._main
        if main is not None and not main.done():
            main.cancel()
            await cancel_and_wait([main])
        ctx = self.session.current
        if ctx is not None and ctx.bus is not None:
            try:  # idempotent: a closed bus returns at once
                await bounded(ctx.bus.close(), self.scenario.deadlines.close_s, "close()", name="busmon.call")
            except Exception:  # quitting must not hang or crash on a broken bus
                pass
