"""``busmon compare``: the same runs on several backends, one table (Kafka vs NATS, done right)."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from busmon.tui.fit import FitTable
from busmon.tui.headless import VERDICT_STYLE, play_headless, summary_table
from busmon.tui.interrupts import Interrupts
from busmon.bus.secrets import redact_url
from busmon.probes.model import RunResult, ScenarioResult
from busmon.probes.harness.scenario import Scenario
from busmon.probes.recording.records import Segment


def play_compare(scenarios: list[Scenario], console: Console,
                 interrupts: Interrupts | None = None,
                 record: Callable[[object], None] | None = None) -> ScenarioResult:
    """Each scenario (one per backend) in turn; Ctrl-C ends the backend under way and skips the rest."""
    runs: list[RunResult] = []
    interrupted = False
    for sc in scenarios:
        console.print(f"[bold]{escape(sc.backend)}[/] ({escape(redact_url(sc.url))})")
        if record is not None:
            record(Segment(sc.backend, redact_url(sc.url)))
        result = play_headless(sc, console, interrupts=interrupts, record=record)
        runs += [replace(r, backend=sc.backend) for r in result.runs]
        if result.interrupted:  # Ctrl-C: no further backend
            interrupted = True
            break
    return ScenarioResult(scenarios[0].name if scenarios else "compare", tuple(runs), interrupted=interrupted)


def compare_table(result: ScenarioResult) -> FitTable | Text:
    """Backends as columns, one block of rows per run: the comparison at a glance; backends that
    do not fit the terminal beside each other are printed in groups (never a number cut)."""
    if not result.runs:
        return summary_table(result)  # says what happened instead of an empty table
    backends = list(dict.fromkeys(r.backend for r in result.runs))
    runs = list(dict.fromkeys(r.name for r in result.runs))
    by = {(r.name, r.backend): r for r in result.runs}
    word = result.verdict
    table = FitTable(title=f"busmon compare: {escape(result.scenario)} — [{VERDICT_STYLE[word]}]{word}[/]")
    short = {b: _short_name(b) for b in backends}
    table.columns = [(escape(short[b]), []) for b in backends]
    renamed = [f"{short[b]} = {b}" for b in backends if short[b] != b]
    if renamed:
        table.caption = escape("; ".join(renamed))

    def cells(fn) -> list[str]:
        return [fn(by[(name, b)]) if (name, b) in by else "–" for b in backends]

    for name in runs:
        table.add_row(f"[bold]{escape(name)}[/]", cells(lambda r: f"[{VERDICT_STYLE[r.verdict]}]{r.verdict}[/]"))
        table.add_row("  publish/s", cells(lambda r: f"{r.throughput.get('publish_per_s', 0):,.0f}"))
        table.add_row("  deliver/s", cells(lambda r: f"{r.throughput.get('deliver_per_s', 0):,.0f}"))
        table.add_row("  latency p50/p99 ms", cells(_latency))
        table.add_row("  peak tasks/threads", cells(_peaks))
        table.add_row("  Δ tasks close→settled", cells(_close_settled))
        table.add_row("  leaked/exited", cells(lambda r: f"{r.count('leaked'):,}/{r.count('exited'):,}"))
        table.add_row("  lost", cells(lambda r: f"{r.delivery.get('lost', 0):,}"))
        table.add_section()
    return table


def _short_name(backend: str) -> str:
    """A column header that keeps four backends within 80 columns: ``TaskLeaker`` for
    ``tests.leaky_buses:TaskLeaker`` (the caption gives the full name)."""
    if len(backend) <= 12:
        return backend
    return backend.rsplit(":", 1)[-1].rsplit(".", 1)[-1][:12]


def _latency(r: RunResult) -> str:
    lat = r.throughput.get("latency_ms", {})
    return f"{lat['p50']:,.1f}/{lat['p99']:,.1f}" if lat else "–"


def _peaks(r: RunResult) -> str:
    tasks = max((v.get("tasks", 0) for v in r.peaks.values()), default=0)
    threads = max((v.get("threads", 0) for v in r.peaks.values()), default=0)
    return f"{tasks:,}/{threads:,}"


def _close_settled(r: RunResult) -> str:
    close, settled = r.task_delta("close"), r.task_delta("settle")
    if close is None or settled is None:
        return "–"
    return f"{close:+,d}→{settled:+,d}"
