"""A number is never cut: piped (rich lays out for 80 columns) and at 60 columns, the headless
summary, its progress lines and the compare table print every figure whole; runs that do not
fit beside each other come in groups, labels wrap. Every count has its thousands separators."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import busmon_in_a_terminal
from rich.console import Console

from busmon.probes.model import PhaseSnapshot, RunResult, Sample, ScenarioResult
from busmon.tui.compare import compare_table
from busmon.tui.headless import live_figures, summary_table

ROOT = Path(__file__).resolve().parents[1]
LADDER = str(ROOT / "sample_configs" / "ladder-nats.toml")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def busmon_at(width: int, args: list[str]) -> subprocess.CompletedProcess:
    """busmon with stdout and stderr piped, told the terminal is ``width`` columns."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    return subprocess.run([sys.executable, "-m", "busmon", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL,
                          env={**env, "PYTHONPATH": str(ROOT), "COLUMNS": str(width)})


def cut(text: str, width: int) -> list[str]:
    """Lines that were cut (rich's …) or are wider than the terminal."""
    return [ln for ln in text.splitlines() if "…" in ln or len(ln) > width]


@pytest.mark.parametrize("width", [80, 60])
def test_the_ladder_summary_and_progress_keep_every_figure_whole(width: int) -> None:
    proc = busmon_at(width, ["play", LADDER, "--headless", "--url", "memory://"])
    assert proc.returncode == 0, proc.stderr
    assert not cut(proc.stdout, width), proc.stdout
    # stderr's one-line messages are soft-wrapped by the terminal (one line each for grep): never cut
    assert "…" not in proc.stderr, proc.stderr
    for figure in ("500/500", "2,000/2,000", "5,000/5,000", "10,000/10,000", "0 · 0 · 0"):
        assert figure in proc.stdout, proc.stdout           # the summary's received / sent, lost · dup · reordered
    for figure in ("2,000/2,000", "5,000/5,000", "10,000/10,000"):
        assert figure in proc.stderr, proc.stderr           # the progress lines
    for run in ("low", "medium", "high", "extreme"):
        assert re.search(rf"\b{run}\b", proc.stdout), proc.stdout
    # the label wraps, it is not cut
    assert "rss Δ MB vs" in proc.stdout and "baseline" in proc.stdout


@pytest.mark.parametrize("width", [80, 60])
def test_the_compare_table_keeps_every_figure_whole(tmp_path: Path, width: int) -> None:
    scenario = tmp_path / "c.toml"
    scenario.write_text('name = "c"\n[probes]\nsettle_timeout_s = 0.5\n[[runs]]\nname = "20k"\nmessages = 20000\n')
    proc = busmon_at(width, ["compare", str(scenario), "--backends",
                             "memory,tests.leaky_buses:TaskLeaker,tests.leaky_buses:SlowExit,tests.leaky_buses:Replacer"])
    assert proc.returncode in (0, 1), proc.stderr
    assert not cut(proc.stdout, width), proc.stdout
    for name in ("memory", "TaskLeaker", "SlowExit", "Replacer"):
        assert name in proc.stdout
    # every backend's publish/s and deliver/s are whole numbers with separators
    rates = re.findall(r"\b\d{1,3}(?:,\d{3})+\b", proc.stdout)
    assert len(rates) >= 8, proc.stdout


def run_result(name: str, **delivery: int) -> RunResult:
    base = PhaseSnapshot("baseline", 0.0, 3, 4, 4, {})
    settle = PhaseSnapshot("settle", 1.0, 30_064, 4, 4, {})
    return RunResult(name=name, backend="nats", verdict="failed", phases=(base, PhaseSnapshot("load", 0.5, 9, 4, 4, {}),
                     PhaseSnapshot("close", 0.9, 12_345 + 3, 4, 4, {}), settle), settle_ms=5_000.0,
                     leftovers=(), delivery={"published": 40_000, **delivery},
                     throughput={"deliver_per_s": 12_345.6, "publish_per_s": 23_456.7,
                                 "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 1_234.5, "max": 2_000.0}})


def rendered(renderable, width: int) -> str:
    console = Console(width=width, record=True, file=open(os.devnull, "w"), color_system=None)
    console.print(renderable)
    return console.export_text()


@pytest.mark.parametrize("width", [80, 60, 40])
def test_every_count_has_its_separators_and_none_is_cut(width: int) -> None:
    r = run_result("big", sent=40_000, received=9_939, lost=30_061, duplicated=1_000, reordered=0)
    text = rendered(summary_table(ScenarioResult("s", (r, run_result("twin", sent=40_000, received=9_939,
                                                                       lost=30_061)))), width)
    assert "…" not in text, text
    for figure in ("9,939/40,000", "30,061 · 1,000 · 0", "+12,345", "+30,061", "12,346", "1,234.5", "5,000"):
        assert figure in text, (figure, text)
    text = rendered(compare_table(ScenarioResult("s", (r,))), width)
    assert "…" not in text and "12,346" in text and "23,457" in text and "+12,345→+30,061" in text, text


def test_the_live_figures_have_separators() -> None:
    s = Sample(run="r", phase="load", t_s=1.0, tasks=30_061, threads=1_204, os_threads=1_210, by_component={},
               published=1, delivered=1, expected=2, publish_per_s=123_456.0, deliver_per_s=98_765.4,
               latency_ms={}, rss_mb=1.0, cpu_percent=1.0, open_fds=1)
    assert live_figures(s) == "tasks 30,061 · threads 1,204/1,210 · publish 123,456/s · deliver 98,765/s"


def _in_a_terminal(args: list[str], width: int, deadline_s: float = 60.0) -> tuple[int | None, str]:
    """busmon in a pseudo-terminal ``width`` columns wide: the live progress display as a person
    sees it (a pipe shows only its last frame)."""
    code, out = busmon_in_a_terminal(args, width, deadline_s)
    return code, ANSI.sub("", out.decode("utf-8", "replace"))


@pytest.mark.parametrize("width", [80, 60])
def test_the_live_progress_in_a_terminal_is_never_cut(tmp_path: Path, width: int) -> None:
    scenario = tmp_path / "paced.toml"
    scenario.write_text('name = "p"\n[probes]\nsettle_timeout_s = 0.3\n[defaults]\nrate_per_s = 4000\n'
                        '[[runs]]\nname = "twenty-thousand"\nmessages = 20000\n')
    code, out = _in_a_terminal(["play", str(scenario), "--headless"], width)
    assert code == 0, out[-3000:]
    assert "…" not in out, out[-3000:]
    assert re.search(r"\b\d{1,2},\d{3}/20,000\b", out), out[-3000:]   # mid-load, e.g. 9,939/20,000
    assert "tasks " in out and "deliver " in out and "/s" in out, out[-3000:]


def test_the_reports_write_counts_whole_with_separators() -> None:
    from busmon.tui.html_report import to_html
    from busmon.tui.report import to_markdown

    result = ScenarioResult("s", (run_result("big", sent=40_000, received=9_939, lost=30_061, duplicated=1_000),))
    md = to_markdown(result)
    assert "| 40,000 | 30,061 | 1,000 | 0 |" in md, md
    assert "sent 40,000 · received 9,939 · lost 30,061 · duplicated 1,000" in md, md
    assert "sent 40,000 · received 9,939 · lost 30,061 · duplicated 1,000" in to_html(result, None, [])
