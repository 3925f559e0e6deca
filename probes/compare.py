"""``busmon compare``: the same runs on several backends, one table (Kafka vs NATS, done right)."""

from __future__ import annotations

from dataclasses import replace

from rich.console import Console
from rich.table import Table

from probes.headless import VERDICT_STYLE, play_headless
from probes.model import RunResult, ScenarioResult
from probes.scenario import Scenario


def play_compare(scenarios: list[Scenario], console: Console) -> ScenarioResult:
    runs: list[RunResult] = []
    for sc in scenarios:
        console.print(f"[bold]{sc.backend}[/] ({sc.url})")
        result = play_headless(sc, console)
        runs += [replace(r, backend=sc.backend) for r in result.runs]
    return ScenarioResult(scenarios[0].name if scenarios else "compare", tuple(runs))


def compare_table(result: ScenarioResult) -> Table:
    table = Table(title=f"busmon compare: {result.scenario} — "
                        f"[{VERDICT_STYLE[result.verdict]}]{result.verdict}[/]")
    for col in ("run", "backend", "verdict", "publish/s", "deliver/s", "p50 ms", "p99 ms",
                "peak tasks", "peak threads", "naive Δ tasks", "leaked", "exited", "lost"):
        table.add_column(col, justify="left" if col in ("run", "backend", "verdict") else "right")
    for r in sorted(result.runs, key=lambda r: (r.name, r.backend)):
        lat = r.throughput.get("latency_ms", {})
        peak = max((v.get("tasks", 0) for v in r.peaks.values()), default=0)
        peak_t = max((v.get("threads", 0) for v in r.peaks.values()), default=0)
        b, c = r.phase("baseline"), r.phase("close")
        naive = c.tasks - b.tasks if b and c else 0
        table.add_row(
            r.name, r.backend, f"[{VERDICT_STYLE[r.verdict]}]{r.verdict}[/]",
            f"{r.throughput.get('publish_per_s', 0):,.0f}", f"{r.throughput.get('deliver_per_s', 0):,.0f}",
            f"{lat.get('p50', 0):.2f}", f"{lat.get('p99', 0):.2f}", str(peak), str(peak_t),
            f"{naive:+d}", str(r.count("leaked")), str(r.count("exited")), str(r.delivery.get("lost", 0)),
        )
    return table
