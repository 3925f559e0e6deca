"""The post-mortem's second table: live task count per component, updated by diff."""

from __future__ import annotations

from typing import Mapping

from rich.text import Text
from textual.widgets import DataTable


class ComponentsTable(DataTable):
    can_focus = False  # a display; keys belong to the leftovers table

    def on_mount(self) -> None:
        self.cursor_type = "none"
        self.add_column("component", key="component")
        self.add_column("live", key="live")
        self.add_column("peak", key="peak")
        self._live: dict[str, int] = {}
        self._peak: dict[str, int] = {}
        self._peak_source: dict[str, int] = {}
        self.filter = ""

    def set_filter(self, text: str) -> None:
        self.filter = text.lower()
        self.clear()
        self._live = {}
        self.show(self._peak_source)

    def show(self, counts: Mapping[str, int], peaks: Mapping[str, int] | None = None) -> None:
        """Apply a fresh reading: only changed cells are touched, rows come and go by key.
        ``peaks`` from the dashboard's model; without them, the table keeps its own."""
        self._peak_source = dict(counts)
        if peaks is not None:
            self._peak = dict(peaks)
        wanted = {c: n for c, n in counts.items() if self.filter in c.lower()}
        for c in list(self._live):
            if c not in wanted:
                self.remove_row(c)
                del self._live[c]
        for c, n in wanted.items():
            peak = max(n, self._peak.get(c, 0))
            if c not in self._live:
                self.add_row(c, Text(str(n), justify="right"), Text(str(peak), justify="right", style="dim"),
                             key=c)
            else:
                if self._live[c] != n:
                    self.update_cell(c, "live", Text(str(n), justify="right"))
                if self._peak.get(c) != peak:
                    self.update_cell(c, "peak", Text(str(peak), justify="right", style="dim"))
            self._live[c] = n
            self._peak[c] = peak

    def reset_peaks(self) -> None:
        self._peak = {}
