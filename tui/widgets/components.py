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
        self._shown: dict[str, tuple[int, int]] = {}   # what each row's cells say now: (live, peak)
        self._peak: dict[str, int] = {}
        self._peak_source: dict[str, int] = {}
        self.filter = ""

    def set_filter(self, text: str) -> None:
        self.filter = text.lower()
        self.clear()
        self._shown = {}
        self.show(self._peak_source)

    def show(self, counts: Mapping[str, int], peaks: Mapping[str, int] | None = None) -> None:
        """Apply a fresh reading: only changed cells are touched, rows come and go by key.
        ``peaks`` from the dashboard's model; without them, the table keeps its own. A peak is
        never shown below its live count."""
        self._peak_source = dict(counts)
        if peaks is not None:
            self._peak = dict(peaks)
        wanted = {c: n for c, n in counts.items() if self.filter in c.lower()}
        for c in list(self._shown):
            if c not in wanted:
                self.remove_row(c)
                del self._shown[c]
        for c, n in wanted.items():
            peak = max(n, self._peak.get(c, 0))
            self._peak[c] = peak
            # compared with what the cells say, not with the model: a row kept from the last run
            # must be redrawn even when the model's new peak is already the right one
            shown = self._shown.get(c)
            if shown is None:
                self.add_row(self._label(c), Text(str(n), justify="right"),
                             Text(str(peak), justify="right", style="dim"), key=c)
            else:
                if shown[0] != n:
                    self.update_cell(c, "live", Text(str(n), justify="right"))
                if shown[1] != peak:
                    self.update_cell(c, "peak", Text(str(peak), justify="right", style="dim"))
            self._shown[c] = (n, peak)

    def _label(self, component: str) -> str:
        """The component within the room its figures leave: shortened in the middle (the
        start says whose, the end which one), so the live and peak columns stay on screen."""
        room = self.content_size.width - 2 * self.cell_padding * 3 - 2 * 5 - self.styles.scrollbar_size_vertical
        if room < 8 or len(component) <= room:
            return component
        head = (room - 1) // 2
        return component[:head] + "…" + component[len(component) - (room - 1 - head):]

    def on_resize(self) -> None:
        """Rows again only when a label must change with the width (rows keep their order)."""
        if any(self._label(c) != str(self.get_row(c)[0]) for c in self._shown):
            self.set_filter(self.filter)

    def shown(self) -> dict[str, tuple[int, int]]:
        """Each row's (live, peak) as the cells say them."""
        return {str(key.value): (int(str(row[1])), int(str(row[2])))
                for key, row in ((k, self.get_row(k)) for k in self.rows)}

    def reset_peaks(self) -> None:
        self._peak = {}
