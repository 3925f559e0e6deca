"""``busmon replay FILE``: a recording played back to the dashboard as it happened.

Stands where the live :class:`~busmon.tui.controller.Controller` stands: the app drains events
from it on its timer and never knows they come from a file. A thread reads the file (so a
one-hour recording shows its first screen as soon as its first events are read); a playback
clock, ``position``, runs at ``speed`` times real time, stops while paused, and jumps to the
next phase or to the end. Textual-free.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Mapping

from busmon.probes.harness.runner import Instruments
from busmon.probes.model import PhaseSnapshot, PhaseStarted, RunFinished, RunResult, ScenarioResult
from busmon.probes.recording.reader import Recording
from busmon.tui.controller import PlaybackDone
from busmon.tui.replay import ReplayResult

#: how far ahead of the playback clock the file is read (seconds of recording, × the speed)
READ_AHEAD_S = 30.0
#: the speeds + and - step through (× real time)
SPEEDS = (1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8, 16, 32, 64)


@dataclass
class RecordedSession:
    """What the app reads of a session: its instruments (nothing is measured here) and its runs."""

    instruments: Instruments = field(default_factory=Instruments)
    results: list[RunResult] = field(default_factory=list)


def recorded_scenario(scenario: Mapping[str, Any]) -> SimpleNamespace:
    """What the dashboard reads of a scenario, from a recording's header (whatever it holds)."""
    def text(key: str, default: str) -> str:
        value = scenario.get(key)
        return value if isinstance(value, str) else default

    runs = scenario.get("runs")
    runs = [r for r in runs if isinstance(r, Mapping)] if isinstance(runs, list) else []
    probes = scenario.get("probes") if isinstance(scenario.get("probes"), Mapping) else {}
    interval = probes.get("interval_ms")
    return SimpleNamespace(
        name=text("name", "recording"), backend=text("backend", "?"), url=text("url", ""),
        runs=tuple(SimpleNamespace(name=str(r.get("name", "")),
                                   hold_s=r["hold_s"] if type(r.get("hold_s")) in (int, float) else 0.0)
                   for r in runs),
        probes=SimpleNamespace(interval_ms=interval if type(interval) is int and interval > 0 else 100))


def clock(seconds: float) -> str:
    """``1:05`` or ``1:02:03``."""
    s = int(max(0.0, seconds))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class ReplayController:
    """Hands the app the recording's events as the playback clock reaches them."""

    interactive = False
    replaying = True

    def __init__(self, recording: Recording, *, instant: bool = False) -> None:
        self.recording = recording
        self.scenario = recorded_scenario(recording.header.scenario)
        if recording.header.command == "dashboard":  # the open-ended session: runs are not counted against a total
            self.scenario.runs = ()
        self.collected = ReplayResult(recording)
        self.session = RecordedSession(results=self.collected.runs)  # the runs replayed so far, as they come
        self.stopped = False
        self.speed = 1.0
        self.paused = False
        self.total_s = recording.duration_hint()      # known at once for a plain file; else once read
        self._events: list[tuple[float, Any]] = []
        self._next = 0
        self._lock = threading.Lock()
        self._read_all = threading.Event()
        self._stop = threading.Event()
        self._more = threading.Event()                # the clock jumped: read on now
        self._want_all = False                        # end: read everything
        self._seeking = False                         # n: read on until the next phase is found
        self.instant = instant
        self._pos = math.inf if instant else 0.0      # instant: everything as fast as the app takes it
        self._shown_t = 0.0                           # the time of the last event handed to the app
        self._problems_told = 0
        self._wall: float | None = None
        self._done_sent = False
        self._reader: threading.Thread | None = None

    # -- the file ------------------------------------------------------------------------------

    def start(self) -> None:
        self._wall = time.monotonic()
        self._reader = threading.Thread(target=self._read, name="busmon.replay-reader", daemon=True)
        self._reader.start()
        if self.total_s is None:  # a .gz recording: its length from one pass of decompression, beside
            threading.Thread(target=self._scan, name="busmon.replay-length", daemon=True).start()

    def _scan(self) -> None:
        total = self.recording.scan_duration()
        if total is not None and not self._read_all.is_set():
            self.total_s = total

    def _read(self) -> None:
        """Read ahead of the playback clock, not the whole file at once: a one-hour recording's
        first screen does not wait for (nor share the interpreter with) parsing all of it."""
        try:
            for t, event in self.recording.events():
                with self._lock:
                    self._events.append((t, event))
                while not (self._stop.is_set() or self._want_all or self._seeking) and t > self.position() + self._ahead():
                    self._more.wait(0.25)  # the clock moves on by itself: look again, or when asked
                    self._more.clear()
                if self._stop.is_set():
                    return
        finally:
            with self._lock:
                if self._events:
                    self.total_s = max(self.total_s or 0.0, self._events[-1][0])
            self._read_all.set()

    def _ahead(self) -> float:
        return READ_AHEAD_S * max(1.0, self.speed)

    # -- the clock ----------------------------------------------------------------------------

    def position(self) -> float:
        if self.paused or self._wall is None or math.isinf(self._pos):
            return self._pos
        return self._pos + (time.monotonic() - self._wall) * self.speed

    def _set_position(self, pos: float) -> None:
        self._pos = pos
        self._wall = time.monotonic()
        self._more.set()

    def set_paused(self, paused: bool) -> None:
        self._set_position(self.position())
        self.paused = paused

    def step_speed(self, step: int) -> str:
        """One speed faster (+1) or slower (-1); returns the limit reached, if any."""
        self._set_position(self.position())
        i = min(range(len(SPEEDS)), key=lambda k: abs(SPEEDS[k] - self.speed))
        wanted = i + step
        self.speed = SPEEDS[max(0, min(len(SPEEDS) - 1, wanted))]
        return "" if 0 <= wanted < len(SPEEDS) else ("fastest" if step > 0 else "slowest")

    def next_phase(self, wait_s: float = 2.0) -> bool:
        """Jump to the next phase's start and pause there (a phase that lasted milliseconds would
        otherwise pass unseen); False when the recording has no further phase. Reads on for it
        (bounded: a phase is rarely far ahead of what is read)."""
        deadline = time.monotonic() + wait_s
        try:
            while True:
                pos = self.position()
                with self._lock:
                    for t, event in self._events[self._next:]:
                        if isinstance(event, PhaseStarted) and t > pos:
                            self._set_position(t)
                            self.paused = True
                            return True
                if self._read_all.is_set() or time.monotonic() > deadline:
                    return False
                self._seeking = True  # read on until the phase is found
                self._more.set()
                self._read_all.wait(0.05)  # or until the file ends; looked at again meanwhile
        finally:
            self._seeking = False

    def to_end(self) -> None:
        self._want_all = True
        self._set_position(math.inf)

    @property
    def at_end(self) -> bool:
        return self._done_sent

    def position_text(self) -> str:
        """``REPLAY 0:12 / 3:45 ×4``: where the playback is, the recording's length, its speed."""
        total = self.total_s
        pos = self.position()
        if math.isinf(pos):  # at once (headless, end): where the events handed out have got to
            pos = self._shown_t
        if total is not None:
            pos = min(pos, total)
        speed = f"×{self.speed:g}" if self.speed >= 1 else f"×1/{round(1 / self.speed)}"
        length = clock(total) if total is not None else "?"
        return f"REPLAY {clock(pos)} / {length} {'END' if self._done_sent else speed}"

    # -- what the app calls ---------------------------------------------------------------------

    def drain(self, limit: int = 10_000) -> list[object]:
        """The events the clock has reached. Played at once (headless), up to the next phase
        boundary only: each screenshot then shows where the recording was at that boundary."""
        pos = self.position()
        out: list[object] = []
        with self._lock:
            while self._next < len(self._events) and len(out) < limit:
                t, event = self._events[self._next]
                if t > pos:
                    break
                self._next += 1
                self._shown_t = t
                self.collected.add(event)
                out.append(event)
                if self.instant and isinstance(event, (PhaseSnapshot, RunFinished)):
                    break
            exhausted = self._read_all.is_set() and self._next == len(self._events)
        if exhausted and not self._done_sent:
            self._done_sent = True
            out.append(PlaybackDone(self.result()))
        return out

    def new_problems(self) -> list[str]:
        """Damaged lines met since last asked (for the screen), and at the end whether the
        recording was cut short."""
        rec = self.recording
        out = rec.problem_lines()[self._problems_told:]
        self._problems_told += len(out)
        return out

    def result(self) -> ScenarioResult:
        """The runs replayed so far; the recording's own ending once all of it was."""
        if self._done_sent or (self._read_all.is_set() and self._next == len(self._events)):
            return self.collected.result()
        partial = self.collected.result()
        return ScenarioResult(partial.scenario, partial.runs, interrupted=True, logs=partial.logs)

    async def stop_playback(self) -> None:
        """Nothing runs to be stopped: a replay quits at once."""

    def shutdown(self) -> None:
        self.stopped = True
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=2.0)
