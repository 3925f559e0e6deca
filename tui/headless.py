"""Headless playback: the same arena and runner, a rich progress display, no Textual."""

from __future__ import annotations

import contextlib
import queue
import time
from typing import Callable, Iterable

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.table import Column
from rich.text import Text

from busmon.bus.deadline import innermost
from busmon.bus.secrets import ScrubbedStream
from busmon.probes.verdict.findings import leaks, rows
from busmon.probes.verdict.leak_text import display_name
from busmon.probes.model import RunResult, PhaseSnapshot, PhaseStarted, Sample, ScenarioResult
from busmon.tui.report import rss_drift_cell, stall_cell
from busmon.probes.harness.scenario import Scenario
from busmon.probes.harness.session import Session
from busmon.probes.model import RunFinished
from busmon.tui.fit import FitTable
from busmon.tui.interrupts import Interrupts
from busmon.tui.recording import tee

_DONE = object()
_INTERRUPT = object()
VERDICT_STYLE = {"clean": "bold green", "leaked": "bold red", "failed": "bold yellow", "interrupted": "bold yellow"}


def play_headless(scenario: Scenario, console: Console | None = None,
                  on_event: Callable[[object], None] | None = None,
                  interrupts: Interrupts | None = None,
                  record: Callable[[object], None] | None = None) -> ScenarioResult:
    """Play every run of ``scenario`` with a live progress display; return the result.

    Ctrl-C arrives as an event (see busmon.tui.interrupts): the first closes, settles and judges the run
    under way and plays no further run; a second press returns the runs that finished at once.
    Either way a result comes back, so the caller writes its report. ``interrupts`` is the
    caller's, installed for longer (``busmon play`` keeps it until the report is written).
    ``record`` gets every event too, on the arena thread (``--record``)."""
    console = console or Console(file=ScrubbedStream("stderr"))
    own = interrupts is None
    interrupts = interrupts or Interrupts()
    events: queue.SimpleQueue[object] = queue.SimpleQueue()
    progress = RunProgress(console)
    bars: dict[str, int] = {}
    with interrupts if own else contextlib.nullcontext(), Session(scenario, tee(events.put, record)) as session, progress:
        interrupts.wake = lambda: events.put(_INTERRUPT)  # SimpleQueue.put is reentrant: safe in a handler
        try:
            if interrupts.times:  # Ctrl-C before the session was up
                events.put(_INTERRUPT)
            future = session.arena.submit(session.play_runs(scenario.runs))
            future.add_done_callback(lambda _: events.put(_DONE))
            handled = 0
            while True:
                try:
                    event = events.get()
                except KeyboardInterrupt:  # no handler of ours (not the main thread's loop)
                    interrupts.times.append(time.monotonic())
                    event = _INTERRUPT
                if event is _DONE:
                    break
                if event is _INTERRUPT:
                    presses = interrupts.presses()  # two signals close together are one Ctrl-C
                    if presses > handled and handled == 0:
                        session.interrupt()
                        progress.console.print("[bold yellow]interrupted[/]: closing the bus and settling, then "
                                               "writing what was measured (Ctrl-C again to quit at once)")
                    elif presses > handled:
                        # the person wants out now: the runs that finished, without the one under way
                        progress.console.print("[bold yellow]interrupted again[/]: not waiting for the run "
                                               "under way; reporting the runs that finished")
                        return ScenarioResult(scenario.name, tuple(session.results), interrupted=True)
                    handled = presses
                    continue
                if on_event is not None:
                    on_event(event)
                show_event(event, progress, bars, console)
            result = future.result()
        finally:
            interrupts.wake = None
    return result


class CountColumn(ProgressColumn):
    """``9,939/40,000``: every count with its thousands separators, never cut."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=True, justify="right"))

    def render(self, task: Task) -> Text:
        total = f"{int(task.total):,}" if task.total is not None else "?"
        return Text(f"{int(task.completed):,}/{total}", style="progress.download")


class RunProgress(Progress):
    """One line per run (name, phase, bar, count, time) and, under them, the live figures of the
    run under way, wrapped between figures when the terminal is narrow: only the bar shrinks,
    a number is never cut."""

    def __init__(self, console: Console, get_time: Callable[[], float] | None = None) -> None:
        """``get_time``: the clock the elapsed times read (a replay's: the recording's own)."""
        super().__init__(
            TextColumn("[bold]{task.fields[run]}[/] {task.fields[phase]:<9}", table_column=Column(no_wrap=True)),
            BarColumn(bar_width=None), CountColumn(),
            TimeElapsedColumn(table_column=Column(no_wrap=True)), console=console, transient=False,
            get_time=get_time,
        )

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            if task.visible and task.fields.get("live"):
                yield Text(f"  {task.fields['live']}", overflow="fold")


def live_figures(event: Sample) -> str:
    """The run's figures under its progress line, every count with thousands separators."""
    return (f"tasks {event.tasks:,} · threads {event.threads:,}/{event.os_threads:,} · "
            f"publish {event.publish_per_s:,.0f}/s · deliver {event.deliver_per_s:,.0f}/s")


def show_event(event: object, progress: Progress, bars: dict[str, int], console: Console) -> None:
    """One arena event as headless playback prints it (a replay prints a recording's the same way)."""
    if isinstance(event, PhaseStarted):
        if event.run not in bars:
            bars[event.run] = progress.add_task("", total=None, run=escape(event.run), phase=event.phase, live="")
            progress.console.print(f"[bold]run {escape(event.run)}[/]")  # its lines follow, then its verdict
        progress.update(bars[event.run], phase=event.phase)
    elif isinstance(event, Sample) and event.run in bars and event.phase != "settle":
        progress.update(
            bars[event.run], completed=event.delivered, total=event.expected or None,
            live=live_figures(event),
        )
    elif isinstance(event, PhaseSnapshot) and event.phase in ("close", "settle"):
        what = "right after close" if event.phase == "close" else "after settling"
        # under 80 columns, so a pipe or CI log never wraps it mid-sentence
        progress.console.print(f"    {what}: {event.tasks:,} tasks, {event.threads:,} threads ("
                               f"+{event.new_tasks:,} tasks, +{event.new_threads:,} threads new)", soft_wrap=True)
    elif isinstance(event, RunFinished):
        r = event.result
        if r.name in bars:
            if r.verdict in ("interrupted", "failed"):  # cut short: against what it was to carry
                progress.update(bars[r.name], phase=r.verdict, completed=r.delivery.get("received", 0), live="")
            else:
                progress.update(bars[r.name], phase=r.verdict, completed=r.delivery.get("received", 0),
                                total=r.delivery.get("sent", 0) or None, live="")
        style = VERDICT_STYLE.get(r.verdict, "")
        line = (f"[{style}]{r.verdict.upper()}[/] run {escape(r.name)}: {len(leaks(r)):,} leaked, "
                f"{r.count('exited'):,} exited during settle, {r.count('ignored'):,} ignored"
                + (f", {len(r.stalls):,} loop stall{'s' if len(r.stalls) != 1 else ''}" if r.stalls else ""))
        if r.error:
            line += f" — {escape(r.error)}"
        progress.console.print(line, soft_wrap=True)
        if close_problem := (r.failure or {}).get("close"):  # after the failure, close failed too
            progress.console.print(f"    close failed as well: {escape(close_problem)}", soft_wrap=True)
        for note in r.notes:
            progress.console.print(f"    [dim]{escape(note)}[/]", soft_wrap=True)


def summary_table(result: ScenarioResult) -> FitTable | Text:
    """Runs as columns, measures as rows; runs that do not fit the terminal beside each other
    are printed in groups (never a number cut). A result with no run says so, not an empty
    table under a verdict."""
    backends = ", ".join(dict.fromkeys(r.backend for r in result.runs))
    if not result.runs:
        what = ("interrupted before any run ended: nothing was measured" if result.interrupted
                else "no run was played")
        return Text.assemble((f"{result.scenario}: ", "bold"), (what, VERDICT_STYLE["interrupted"]))
    word = result.verdict
    table = FitTable(title=f"{escape(result.scenario)} · {escape(backends)} · "
                           f"[{VERDICT_STYLE[word]}]{word}[/]")
    runs = result.runs
    table.columns = [(escape(r.name), []) for r in runs]
    row = table.add_row

    def loaded(r: RunResult, text: str) -> str:
        """A figure of the load, or – for a run that failed before its load began (not a zero)."""
        return text if r.phase("load") is not None or r.delivery.get("published", 0) else "–"

    def n(value: int) -> str:
        return f"{value:,}"

    row("verdict", [f"[{VERDICT_STYLE[r.verdict]}]{r.verdict}[/]" for r in runs])
    row("received / sent", [loaded(r, f"{r.delivery.get('received', 0):,}/{r.delivery.get('sent', 0):,}")
                            for r in runs])
    row("lost · dup · reordered", [loaded(r, f"{r.delivery.get('lost', 0):,} · {r.delivery.get('duplicated', 0):,} · "
                                             f"{r.delivery.get('reordered', 0):,}") for r in runs])
    row("deliver/s", [loaded(r, f"{r.throughput.get('deliver_per_s', 0):,.0f}") for r in runs])
    row("latency p99 ms", [loaded(r, f"{r.throughput['latency_ms']['p99']:,.1f}") if r.throughput.get("latency_ms")
                           else "–" for r in runs])
    row("Δ tasks right after close", [signed_count(r.task_delta("close")) for r in runs])
    row("Δ tasks after settling", [signed_count(r.task_delta("settle")) for r in runs])
    row("[red]leaked[/]", [n(len(leaks(r))) for r in runs])
    row("exited while settling", [n(r.count("exited")) for r in runs])
    row("ignored", [n(r.count("ignored")) for r in runs])
    row("settle ms", [f"{r.settle_ms:,.0f}" for r in runs])
    for label, kind in (("sockets left open", "socket"), ("other fds left open", "fd"),
                        ("child processes left", "process")):
        row(label, [n(sum(1 for x in r.leftovers if x.kind == kind and x.state in ("leaked", "destroyed")))
                    for r in runs])
    row("retained memory", [", ".join(f"{f['type'].rsplit('.', 1)[-1]} ×{f['count']:,}" for f in r.retained()) or "0"
                            for r in runs])
    row("loop stalls", [stall_cell(r) for r in runs])
    row("rss Δ MB vs first baseline", [rss_drift_cell(r) for r in runs])
    if any(r.drift for r in runs):
        row("drift vs first baseline", [f"{r.drift.get('tasks', 0):,}t/{r.drift.get('threads', 0):,}th" if r.drift
                                        else "–" for r in runs])
    table.caption = ("Δ against each run's own baseline. 'Right after close' is the naive count "
                     "the post-mortem took; 'after settling' waits for exits, then GC.")
    return table


def signed_count(n: int | None) -> str:
    """``+3``, ``+12,345``, ``0``, ``-1``; ``–`` when there is nothing to compare."""
    return "–" if n is None else f"{n:+,}" if n else "0"


def leak_lines(result: ScenarioResult) -> list[str]:
    """Every leaked task and thread by name, with where it is now (rich markup lines)."""
    lines = []
    for r in result.runs:
        for x in rows(r):
            if x.state not in ("leaked", "destroyed", "stalled"):
                continue
            component = "" if x.component in (x.name, "unknown") else f"  [dim]({escape(x.component)})[/]"
            what = ("[bold yellow]stall[/]" if x.kind == "stall"  # 'loop blocked 251 ms in load'
                    else f"[bold red]{x.state}[/] {x.kind}")
            lines.append(f"{what} [bold]{escape(display_name(x))}[/]{component}  [dim]run {escape(r.name)}[/]")
            if x.state == "destroyed" or x.kind in ("timer", "socket", "fd", "process", "memory", "stall"):
                lines.append(f"    {escape(x.detail)}")
            elif x.kind == "thread" and "waits here until" in x.detail:
                lines.append(f"    {escape(x.detail.split('; ', 1)[-1])}")
            elif where := innermost(x.stack) or x.detail:
                lines.append(f"    now at {escape(where)}")
            if x.created_at:
                verb = "allocated" if x.kind == "memory" else "created"
                lines.append(f"    {verb} at {escape(x.created_at)}")
    return lines
