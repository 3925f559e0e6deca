"""The dashboard's widgets, one job each; each is fed immutable records from the arena."""

from busmon.tui.widgets.charts import PhaseChart
from busmon.tui.widgets.components import ComponentsTable
from busmon.tui.widgets.leftovers import LeftoversTable, StackView
from busmon.tui.widgets.phase_bar import PhaseBar
from busmon.tui.widgets.phase_table import PhaseTable
from busmon.tui.widgets.throughput import ThroughputPanel
from busmon.tui.widgets.verdict import VerdictBanner

__all__ = ["ComponentsTable", "LeftoversTable", "PhaseBar", "PhaseChart", "PhaseTable", "StackView",
           "ThroughputPanel", "VerdictBanner"]
