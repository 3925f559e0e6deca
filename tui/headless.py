"""Headless playback: the same arena and runner, a rich progress display, no Textual."""

from __future__ import annotations

import queue
import time
from typing import Callable

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bus.deadline import innermost
from bus.secrets import ScrubbedStream
from probes.findings import leaks, rows
from probes.leak_text import display_name
from probes.model import RunResult, PhaseSnapshot, PhaseStarted, Sample, ScenarioResult, signed
from tui.report import rss_drift_cell, stall_cell
from probes.scenario import Scenario
from probes.session import RunFinished, Session

_DONE = object()
#: a second SIGINT sooner than this is the first one again (``timeout -s INT`` signals the
#: process and its group), not a person pressing Ctrl-C twice
SECOND_INTERRUPT_S = 1.0
VERDICT_STYLE = {"clean": "bold green", "leaked": "bold red", "failed": "bold yellow"}


def play_headless(scenario: Scenario, console: Console | None = None,
                  on_event: Callable[[object], None] | None = None) -> ScenarioResult:
    """Play every run of ``scenario`` with a live progress display; return the result."""
    console = console or Console(file=ScrubbedStream("stderr"))
    events: queue.SimpleQueue[object] = queue.SimpleQueue()
    progress = Progress(
        TextColumn("[bold]{task.fields[run]}[/] {task.fields[phase]:<9}"),
        BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[live]}"),
        TimeElapsedColumn(), console=console, transient=False,
    )
    bars: dict[str, int] = {}
    with Session(scenario, events.put) as session, progress:
        future = session.arena.submit(session.play_runs(scenario.runs))
        future.add_done_callback(lambda _: events.put(_DONE))
        interrupted_at: float | None = None
        while True:
            try:
                event = events.get()
            except KeyboardInterrupt:
                now = time.monotonic()
                if interrupted_at is None:
                    interrupted_at = now
                    session.interrupt()
                    progress.console.print("[bold yellow]interrupted[/]: closing the bus and settling, then "
                                           "writing what was measured (Ctrl-C again to quit at once)")
                elif now - interrupted_at > SECOND_INTERRUPT_S:
                    # the person wants out now: the runs that finished, without the one under way
                    progress.console.print("[bold yellow]interrupted again[/]: not waiting for the run "
                                           "under way; reporting the runs that finished")
                    return ScenarioResult(scenario.name, tuple(session.results), interrupted=True)
                # else: the same Ctrl-C delivered twice (a wrapper signalling the process group)
                continue
            if event is _DONE:
                break
            if on_event is not None:
                on_event(event)
            _show(event, progress, bars, console)
        result = future.result()
    return result


def _show(event: object, progress: Progress, bars: dict[str, int], console: Console) -> None:
    if isinstance(event, PhaseStarted):
        if event.run not in bars:
            bars[event.run] = progress.add_task("", total=None, run=escape(event.run), phase=event.phase, live="")
            progress.console.print(f"[bold]run {escape(event.run)}[/]")  # its lines follow, then its verdict
        progress.update(bars[event.run], phase=event.phase)
    elif isinstance(event, Sample) and event.run in bars and event.phase != "settle":
        progress.update(
            bars[event.run], completed=event.delivered, total=event.expected or None,
            live=f"tasks {event.tasks:>5}  threads {event.threads}/{event.os_threads}  "
                 f"pub {event.publish_per_s:>9,.0f}/s  del {event.deliver_per_s:>9,.0f}/s",
        )
    elif isinstance(event, PhaseSnapshot) and event.phase in ("close", "settle"):
        what = "right after close" if event.phase == "close" else "after settling"
        # under 80 columns, so a pipe or CI log never wraps it mid-sentence
        progress.console.print(f"    {what}: {event.tasks} tasks, {event.threads} threads ("
                               f"+{event.new_tasks} tasks, +{event.new_threads} threads new)", soft_wrap=True)
    elif isinstance(event, RunFinished):
        r = event.result
        if r.name in bars:
            progress.update(bars[r.name], phase=r.verdict, completed=r.delivery.get("received", 0),
                            total=r.delivery.get("sent", 0) or None, live="")
        style = VERDICT_STYLE.get(r.verdict, "")
        line = (f"[{style}]{r.verdict.upper()}[/] run {escape(r.name)}: {len(leaks(r))} leaked, "
                f"{r.count('exited')} exited during settle, {r.count('ignored')} ignored"
                + (f", {len(r.stalls)} loop stalls" if r.stalls else ""))
        if r.error:
            line += f" — {escape(r.error)}"
        progress.console.print(line, soft_wrap=True)
        if close_problem := (r.failure or {}).get("close"):  # after the failure, close failed too
            progress.console.print(f"    close failed as well: {escape(close_problem)}", soft_wrap=True)
        for note in r.notes:
            progress.console.print(f"    [dim]{escape(note)}[/]", soft_wrap=True)


def summary_table(result: ScenarioResult) -> Table:
    """Runs as columns, measures as rows: fits 80 columns for the post-mortem's four-run ladder."""
    backends = ", ".join(dict.fromkeys(r.backend for r in result.runs))
    cut_short = [r for r in result.runs if (r.failure or {}).get("kind") == "interrupted"]
    failed = [r for r in result.runs if r.verdict == "failed"]
    word = "interrupted" if failed and failed == cut_short else result.verdict  # q is not a failure
    table = Table(title=f"{escape(result.scenario)} · {escape(backends)} · "
                        f"[{VERDICT_STYLE[result.verdict]}]{word}[/]", box=box.SIMPLE_HEAD)
    table.add_column("", no_wrap=True)
    for r in result.runs:
        table.add_column(escape(r.name), justify="right", no_wrap=True)

    def row(label: str, cells: list[str]) -> None:
        table.add_row(label, *cells)

    runs = result.runs

    def loaded(r: RunResult, text: str) -> str:
        """A figure of the load, or – for a run that failed before its load began (not a zero)."""
        return text if r.phase("load") is not None or r.delivery.get("published", 0) else "–"

    def verdict(r: RunResult) -> str:  # a run cut short by q or Ctrl-C says so, not just "failed"
        word = "interrupted" if (r.failure or {}).get("kind") == "interrupted" else r.verdict
        return f"[{VERDICT_STYLE[r.verdict]}]{word}[/]"

    row("verdict", [verdict(r) for r in runs])
    row("received / sent", [loaded(r, f"{r.delivery.get('received', 0):,}/{r.delivery.get('sent', 0):,}")
                            for r in runs])
    row("lost · dup · reordered", [loaded(r, f"{r.delivery.get('lost', 0)} · {r.delivery.get('duplicated', 0)} · "
                                             f"{r.delivery.get('reordered', 0)}") for r in runs])
    row("deliver/s", [loaded(r, f"{r.throughput.get('deliver_per_s', 0):,.0f}") for r in runs])
    row("latency p99 ms", [loaded(r, f"{r.throughput['latency_ms']['p99']:.1f}") if r.throughput.get("latency_ms")
                           else "–" for r in runs])
    row("Δ tasks right after close", [signed(r.task_delta("close")) for r in runs])
    row("Δ tasks after settling", [signed(r.task_delta("settle")) for r in runs])
    row("[red]leaked[/]", [str(len(leaks(r))) for r in runs])
    row("exited while settling", [str(r.count("exited")) for r in runs])
    row("ignored", [str(r.count("ignored")) for r in runs])
    row("settle ms", [f"{r.settle_ms:,.0f}" for r in runs])
    for label, kind in (("sockets left open", "socket"), ("other fds left open", "fd"),
                        ("child processes left", "process")):
        row(label, [str(sum(1 for x in r.leftovers if x.kind == kind and x.state in ("leaked", "destroyed")))
                    for r in runs])
    row("retained memory", [", ".join(f"{f['type'].rsplit('.', 1)[-1]} ×{f['count']:,}" for f in r.retained()) or "0"
                            for r in runs])
    row("loop stalls", [stall_cell(r) for r in runs])
    row("rss Δ MB vs first baseline", [rss_drift_cell(r) for r in runs])
    if any(r.drift for r in runs):
        row("drift vs first baseline", [f"{r.drift.get('tasks', 0)}t/{r.drift.get('threads', 0)}th" if r.drift
                                        else "–" for r in runs])
    table.caption = ("Δ against each run's own baseline. 'Right after close' is the naive count "
                     "the post-mortem took; 'after settling' waits for exits, then GC.")
    return table


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
