"""``busmon replay FILE --headless``: a recording read back through the same display and reports
the live run had, and the result it ended with. Textual-free.

The events go through headless playback's own printer (``show_event``), as fast as they can be read:
the run lines, the counts right after close and after settling, each verdict. The result is
built from the recorded runs exactly as the live command built it (a ``compare`` recording's
runs carry their segment's backend), so the summary and every report come out the same.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from rich.console import Console
from rich.markup import escape

from busmon.probes.harness.logs import LogLine
from busmon.probes.model import RunFinished, RunResult, ScenarioResult
from busmon.probes.recording.reader import CUT_SHORT, Recording
from busmon.probes.recording.records import Segment
from busmon.tui.headless import RunProgress, show_event


class ReplayResult:
    """What a recording ends with: the runs, in order, and how the command ended."""

    def __init__(self, recording: Recording) -> None:
        self.recording = recording
        self.runs: list[RunResult] = []
        self._backend: str | None = None

    def add(self, event: Any) -> None:
        if isinstance(event, Segment):
            self._backend = event.backend
        elif isinstance(event, RunFinished):
            r = event.result
            self.runs.append(replace(r, backend=self._backend) if self._backend is not None else r)

    def result(self) -> ScenarioResult:
        rec = self.recording
        ended = rec.ended
        logs = tuple(LogLine(**{k: line.get(k) for k in ("logger", "level", "count", "message")})
                     for line in (ended.logs if ended else ()) if _is_log_line(line))
        # cut short: the runs that finished before busmon stopped, as an interrupted command's
        interrupted = ended.interrupted if ended is not None and not rec.cut_short else True
        return ScenarioResult(str(rec.header.scenario.get("name", "?")), tuple(self.runs), interrupted=interrupted,
                              logs=logs)


def _is_log_line(line: Any) -> bool:
    return (isinstance(line, dict) and isinstance(line.get("logger"), str) and isinstance(line.get("level"), str)
            and type(line.get("count")) is int and isinstance(line.get("message"), str))


def replay_headless(recording: Recording, console: Console) -> ScenarioResult:
    """Print the recording's progress lines as the live run printed them; return its result."""
    collected = ReplayResult(recording)
    if recording.header.command in PROGRAM_COMMANDS:
        return _replay_program(recording, console, collected)
    now = [0.0]  # the recording's clock: each run's elapsed time reads as it did live
    progress = RunProgress(console, get_time=lambda: now[0])
    bars: dict[str, int] = {}
    with progress:
        for t, event in recording.events():
            now[0] = t
            collected.add(event)
            if isinstance(event, Segment):
                progress.console.print(f"[bold]{escape(event.backend)}[/] ({escape(event.target)})")
                continue
            show_event(event, progress, bars, console)
    say_problems(recording, console)
    return collected.result()


#: recordings of a program judged in its own process (busmon run, busmon attach)
PROGRAM_COMMANDS = ("run", "attach")


def _replay_program(recording: Recording, console: Console, collected: ReplayResult) -> ScenarioResult:
    """A program's recording: the lines ``busmon run`` said, and its verdicts in the same words."""
    from rich.text import Text

    from busmon.tui.run_output import RunTeller

    sc = recording.header.scenario
    timeout = sc.get("settle_timeout_s")
    stall = sc.get("stall_ms")
    teller = RunTeller(lambda line: console.print(Text(line), soft_wrap=True, highlight=False),
                       timeout if type(timeout) in (int, float) else 5.0, stall if type(stall) is int else 250)
    for _, event in recording.events():
        collected.add(event)
        teller.event(event)
    teller.tell_verdicts()
    say_problems(recording, console)
    return collected.result()


def read_result(recording: Recording) -> ScenarioResult:
    """The result a recording ends with, read through and kept no further: for a comparison."""
    collected = ReplayResult(recording)
    for _, event in recording.events():
        collected.add(event)
    return collected.result()


def say_problems(recording: Recording, console: Console) -> None:
    """Damaged lines, one each, and where a recording cut short ends."""
    for line in recording.problem_lines():
        console.print(f"busmon: {line}", markup=False, highlight=False, soft_wrap=True)
    if recording.cut_short:
        console.print(f"busmon: {recording.path}: {CUT_SHORT}", style="yellow", markup=False, highlight=False,
                      soft_wrap=True)
