"""``busmon replay A --against B``: two recordings of the same scenario side by side, and which
leftovers are new in A and which are gone: did the change fix the leak, or make one?

Leftovers are matched across recordings by what they are, not by the numbers a process draws
afresh each time: kind, component, and the name and detail with their digits folded (a task
counter, a port, a pid, a file descriptor differ between two runs of the same code).
"""

from __future__ import annotations

import re
from pathlib import Path

from rich.markup import escape
from rich.text import Text

from busmon.probes.model import Leftover, RunResult, ScenarioResult
from busmon.probes.verdict.findings import leaks
from busmon.probes.verdict.leak_text import display_name
from busmon.tui.fit import FitTable
from busmon.tui.headless import VERDICT_STYLE

_DIGITS = re.compile(r"\d+")

Key = tuple[str, str, str, str]


def leftover_key(x: Leftover) -> Key:
    """What a leftover is, the same in two recordings of the same code."""
    detail = x.detail.split(" (", 1)[0] if x.kind in ("task", "thread") else ""
    return x.kind, _DIGITS.sub("N", x.component), _DIGITS.sub("N", display_name(x)), _DIGITS.sub("N", detail)


def failing(run: RunResult) -> dict[Key, list[Leftover]]:
    """The run's failing leftovers by what they are; two subscriptions' identical tasks are two."""
    out: dict[Key, list[Leftover]] = {}
    for x in leaks(run):
        out.setdefault(leftover_key(x), []).append(x)
    return out


def _runs(result: ScenarioResult) -> dict[tuple[str, str], RunResult]:
    """Runs by name; by name and backend in a ``compare`` recording (several backends). Two
    recordings of one scenario on different buses (the fix and the bug) match by run name."""
    several = len({r.backend for r in result.runs}) > 1
    return {(r.name, r.backend if several else ""): r for r in result.runs}


def against_table(a: ScenarioResult, b: ScenarioResult, a_path: Path, b_path: Path) -> FitTable | Text:
    """Per run (in A's order, then runs only B has): B and A side by side."""
    runs_a, runs_b = _runs(a), _runs(b)
    names = list(dict.fromkeys([*runs_a, *runs_b]))
    if not names:
        return Text("neither recording holds a finished run: nothing to compare", style="yellow")
    table = FitTable(title=f"busmon replay: {escape(a.scenario)} — {escape(a_path.name)} against {escape(b_path.name)}")
    table.columns = [(f"B: {escape(b_path.name)}", []), (f"A: {escape(a_path.name)}", [])]
    table.caption = "B is the recording compared against; A is the one replayed."

    def cells(key: tuple[str, str], fn) -> list[str]:  # type: ignore[no-untyped-def]
        return [fn(runs[key]) if key in runs else "–" for runs in (runs_b, runs_a)]

    for key in names:
        name, backend = key
        label = f"{name} · {backend}" if backend else name
        table.add_row(f"[bold]{escape(label)}[/]", cells(key, lambda r: f"[{VERDICT_STYLE[r.verdict]}]{r.verdict}[/]"))
        table.add_row("  deliver/s", cells(key, lambda r: f"{r.throughput.get('deliver_per_s', 0):,.0f}"))
        table.add_row("  settle ms", cells(key, lambda r: f"{r.settle_ms:,.0f}"))
        table.add_row("  leaked", cells(key, lambda r: f"{len(leaks(r)):,}"))
        table.add_row("  exited while settling", cells(key, lambda r: f"{r.count('exited'):,}"))
        if key in runs_a and key in runs_b:
            new, gone = changes(runs_a[key], runs_b[key])
            table.add_row("  new in A", ["", f"{len(new):,}"])
            table.add_row("  gone in A", ["", f"{len(gone):,}"])
    return table


def changes(a: RunResult, b: RunResult) -> tuple[list[Leftover], list[Leftover]]:
    """Leaked in A but not in B (new), and leaked in B but not in A (gone): counted, so a third
    copy of a leftover B had twice is one new one."""
    fa, fb = failing(a), failing(b)
    new = [x for k, xs in fa.items() for x in xs[len(fb.get(k, ())):]]
    gone = [x for k, xs in fb.items() for x in xs[len(fa.get(k, ())):]]
    return new, gone


def change_lines(a: ScenarioResult, b: ScenarioResult) -> list[str]:
    """One line per leftover that is new or gone, per run both recordings have (rich markup)."""
    runs_b = _runs(b)
    lines = []
    for key, ra in _runs(a).items():
        rb = runs_b.get(key)
        if rb is None:
            continue
        new, gone = changes(ra, rb)
        for x in new:
            lines.append(f"[bold red]new in A[/] {x.kind} [bold]{escape(display_name(x))}[/]  [dim]run {escape(key[0])}[/]")
        for x in gone:
            lines.append(f"[bold green]gone in A[/] {x.kind} [bold]{escape(display_name(x))}[/]  [dim]run {escape(key[0])}[/]")
    return lines


def verdict_line(a: ScenarioResult, b: ScenarioResult) -> str:
    """The answer in one line: fixed, made one, changed, or the same."""
    runs_b = _runs(b)
    new = gone = 0
    runs_a = _runs(a)
    common = [key for key in runs_a if key in runs_b]
    if not common:
        return "the recordings have no run in common (runs are matched by name): nothing to compare"
    for key in common:
        n, g = changes(runs_a[key], runs_b[key])
        new, gone = new + len(n), gone + len(g)
    only = [f"run {k[0]} only in {'A' if k in runs_a else 'B'}" for k in dict.fromkeys([*runs_a, *runs_b])
            if (k in runs_a) != (k in runs_b)]
    answer = _answer(new, gone, b)
    return answer + (f" (in the runs both have; {', '.join(only)})" if only else "")


def _answer(new: int, gone: int, b: ScenarioResult) -> str:
    if new and gone:
        return f"A leaks {new:,} leftover{'s' if new != 1 else ''} B did not, and no longer leaks {gone:,} that B did"
    if new:
        return f"A leaks {new:,} leftover{'s' if new != 1 else ''} that B did not"
    if gone:
        return f"A no longer leaks {gone:,} leftover{'s' if gone != 1 else ''} that B did, and leaks nothing new"
    return "A leaks nothing B did not" + (", and B leaked nothing" if not any(leaks(r) for r in b.runs) else
                                         "; the same leftovers leak in both")
