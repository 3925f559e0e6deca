"""The post-mortem's first table: tasks and threads per phase, the delta from baseline, and
the naive count right after close beside the settled one."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from busmon.probes.model import PhaseSnapshot


def _delta(n: int, base: int) -> Text:
    d = n - base
    if d > 0:
        return Text(f"+{d}", style="yellow")
    return Text(str(d), style="green" if d == 0 else "cyan")


class PhaseTable(DataTable):
    can_focus = False  # a display; keys belong to the leftovers table

    DEFAULT_CSS = """
    PhaseTable { height: auto; max-height: 10; }
    """

    def on_mount(self) -> None:
        self.cursor_type = "none"
        self.zebra_stripes = True
        self.add_column("phase", key="phase")
        self.add_column("tasks", key="tasks")
        self.add_column("Δ", key="delta")
        self.add_column("thr", key="threads")  # Python threads / OS threads (help says so)
        self.add_column("new", key="new")
        self.add_column("sock", key="sockets")
        self.baseline: PhaseSnapshot | None = None
        self.settle_ms: float | None = None

    def reset(self) -> None:
        self.clear()
        self.baseline = None
        self.settle_ms = None

    def show_snapshots(self, snaps: tuple[PhaseSnapshot, ...]) -> None:
        """The run's snapshots so far (from the dashboard's model): new rows added, a new run's
        baseline starts the table again."""
        if not snaps:
            self.reset()
            return
        for snap in snaps:
            if snap.phase not in self.rows or snap.phase == "baseline" and self.baseline is not snap:
                self.add_snapshot(snap)

    def add_snapshot(self, snap: PhaseSnapshot) -> None:
        if snap.phase == "baseline":
            self.reset()
            self.baseline = snap
        base = self.baseline
        label = {"close": "close (naive)", "settle": "settled"}.get(snap.phase, snap.phase)
        style = "bold" if snap.phase in ("close", "settle") else ""
        row = (
            Text(label, style=style),
            Text(str(snap.tasks), style=style, justify="right"),
            _delta(snap.tasks, base.tasks) if base else Text("–"),
            Text(f"{snap.threads}/{snap.os_threads}", justify="right"),
            Text(str(snap.new_tasks + snap.new_threads),
                 style="red" if snap.phase == "settle" and snap.new_tasks + snap.new_threads else ""),
            Text(str(snap.sockets), justify="right", style="red" if snap.phase == "settle" and snap.sockets else ""),
        )
        if snap.phase in self.rows:
            for col, value in zip(("phase", "tasks", "delta", "threads", "new", "sockets"), row, strict=True):
                self.update_cell(snap.phase, col, value)
        else:
            self.add_row(*row, key=snap.phase)
