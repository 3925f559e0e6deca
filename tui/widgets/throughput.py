"""Throughput and delivery: rates, latency, the audit, and a progress bar during load."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import ProgressBar

from probes.model import Sample


class Rates(Widget):
    """The numbers, redrawn in place: a fixed-height widget whose refresh never re-lays out the
    screen (``Static.update`` would, on every sample, and cost the bus throughput)."""

    DEFAULT_CSS = """
    Rates { height: 4; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sample: Sample | None = None
        self.delivery: dict[str, int] | None = None

    def render(self) -> Table:
        grid = Table.grid(padding=(0, 2))
        s, delivery = self.sample, self.delivery
        if s is None:
            return grid
        grid.add_column(style="dim")
        grid.add_column(justify="right")
        grid.add_column(style="dim")
        grid.add_column(justify="right")
        lat = s.latency_ms or {}
        grid.add_row("pub/s", f"{s.publish_per_s:,.0f}", "del/s", f"{s.deliver_per_s:,.0f}")
        grid.add_row("p50", f"{lat.get('p50', 0):.2f}ms", "p99", f"{lat.get('p99', 0):.2f}ms")
        if delivery:
            lost = delivery.get("lost", 0)
            grid.add_row("sent", f"{delivery.get('sent', 0):,}", "recv", f"{delivery.get('received', 0):,}")
            grid.add_row("lost", Text(f"{lost:,}", style="red" if lost else "green"),
                         "dup/reord", f"{delivery.get('duplicated', 0)}/{delivery.get('reordered', 0)}")
        else:
            grid.add_row("sent", f"{s.published:,}", "recv", f"{s.delivered:,}")
            grid.add_row("rss MB", f"{s.rss_mb:,.0f}", "cpu %", f"{s.cpu_percent:.0f}")
        return grid


class ThroughputPanel(Vertical):
    DEFAULT_CSS = """
    ThroughputPanel { height: auto; }
    ThroughputPanel > ProgressBar { height: 1; }
    """

    def compose(self) -> ComposeResult:
        yield Rates()
        yield ProgressBar(total=None, show_eta=False, id="progress")

    def show(self, s: Sample, delivery: dict[str, int] | None = None) -> None:
        rates = self.query_one(Rates)
        rates.sample, rates.delivery = s, delivery
        rates.refresh()
        bar = self.query_one(ProgressBar)
        if s.expected:
            bar.update(total=s.expected, progress=s.delivered)
