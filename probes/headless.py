"""Headless playback: the same arena and runner, a rich progress display, no Textual."""

from __future__ import annotations

import queue
from typing import Callable

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from probes.model import PhaseSnapshot, PhaseStarted, RunResult, Sample, ScenarioResult
from probes.scenario import Scenario
from probes.session import RunFinished, Session

_DONE = object()
VERDICT_STYLE = {"clean": "bold green", "leaked": "bold red", "failed": "bold yellow"}


def play_headless(scenario: Scenario, console: Console | None = None,
                  on_event: Callable[[object], None] | None = None) -> ScenarioResult:
    """Play every run of ``scenario`` with a live progress display; return the result."""
    console = console or Console(stderr=True)
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
        while (event := events.get()) is not _DONE:
            if on_event is not None:
                on_event(event)
            _show(event, progress, bars, console)
        result = future.result()
    return result


def _show(event: object, progress: Progress, bars: dict[str, int], console: Console) -> None:
    if isinstance(event, PhaseStarted):
        if event.run not in bars:
            bars[event.run] = progress.add_task("", total=None, run=event.run, phase=event.phase, live="")
        progress.update(bars[event.run], phase=event.phase)
    elif isinstance(event, Sample) and event.run in bars:
        progress.update(
            bars[event.run], completed=event.delivered, total=event.expected or None,
            live=f"tasks {event.tasks:>5}  threads {event.threads}/{event.os_threads}  "
                 f"pub {event.publish_per_s:>9,.0f}/s  del {event.deliver_per_s:>9,.0f}/s",
        )
    elif isinstance(event, PhaseSnapshot) and event.phase in ("close", "settle"):
        what = "right after close" if event.phase == "close" else "after settling"
        progress.console.print(f"    {what}: {event.tasks} tasks, {event.threads} threads "
                               f"({event.new_tasks} tasks / {event.new_threads} threads new since baseline)")
    elif isinstance(event, RunFinished):
        r = event.result
        if r.name in bars:
            progress.update(bars[r.name], phase=r.verdict)
        style = VERDICT_STYLE.get(r.verdict, "")
        line = (f"[{style}]{r.verdict.upper()}[/] run {r.name}: {r.count('leaked')} leaked, "
                f"{r.count('exited')} exited during settle, {r.count('ignored')} ignored")
        if r.error:
            line += f" — {r.error}"
        progress.console.print(line)


def summary_table(result: ScenarioResult) -> Table:
    """One row per run; "close Δ" is the naive count right after close, "settled Δ" the honest one."""
    backends = ", ".join(dict.fromkeys(r.backend for r in result.runs))
    table = Table(title=f"{result.scenario} on {backends}: "
                        f"[{VERDICT_STYLE[result.verdict]}]{result.verdict}[/]")
    table.box = box.SIMPLE_HEAD
    for col in ("run", "verdict", "received\n/ sent", "deliver\n/s", "p99\nms", "close\nΔ tasks",
                "settled\nΔ tasks", "leaked\n/ exited", "settle\nms"):
        left = col in ("run", "verdict")
        table.add_column(col, justify="left" if left else "right", no_wrap=left,
                         min_width=max(len(word) for word in col.split()))
    for r in result.runs:
        lat = r.throughput.get("latency_ms", {})
        table.add_row(
            r.name, f"[{VERDICT_STYLE[r.verdict]}]{r.verdict}[/]",
            f"{r.delivery.get('received', 0)}/{r.delivery.get('sent', 0)}",
            f"{r.throughput.get('deliver_per_s', 0):,.0f}",
            f"{lat['p99']:.2f}" if lat else "–",
            _delta(r, "close"), _delta(r, "settle"),
            f"{r.count('leaked')} / {r.count('exited')}", f"{r.settle_ms:g}",
        )
    table.caption = ("Δ: tasks against the run's baseline. close Δ is the naive count taken the "
                     "instant close returned; settled Δ after waiting for exits and a GC.")
    return table


def _delta(r: RunResult, phase: str) -> str:
    b, p = r.phase("baseline"), r.phase(phase)
    if not b or not p:
        return "–"
    d = p.tasks - b.tasks
    return f"+{d}" if d > 0 else str(d)


def leak_table(result: ScenarioResult) -> Table | None:
    rows = [(r, x) for r in result.runs for x in r.leftovers if x.state == "leaked"]
    if not rows:
        return None
    table = Table(title="[bold red]Still alive after settling (leaked)[/]")
    for col in ("run", "kind", "name", "component", "where it is now"):
        table.add_column(col)
    for r, x in rows:
        table.add_row(r.name, x.kind, x.name, x.component, x.stack[-1] if x.stack else x.detail)
    return table
