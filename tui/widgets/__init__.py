"""The dashboard's widgets, one job each; each is fed immutable records from the arena."""

from tui.widgets.charts import PhaseChart
from tui.widgets.components import ComponentsTable
from tui.widgets.leftovers import LeftoversTable, StackView
from tui.widgets.phase_bar import PhaseBar
from tui.widgets.phase_table import PhaseTable
from tui.widgets.throughput import ThroughputPanel
from tui.widgets.verdict import VerdictBanner

__all__ = ["ComponentsTable", "LeftoversTable", "PhaseBar", "PhaseChart", "PhaseTable", "StackView",
           "ThroughputPanel", "VerdictBanner"]
