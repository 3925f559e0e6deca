"""Leftovers after close: leaked in red, exited dimmed with their exit time, ignored labelled;
the selected one's stack beside it."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable, Static

from probes.model import Leftover

STYLE = {"leaked": "bold red", "destroyed": "bold red", "unknown": "yellow", "exited": "dim",
         "ignored": "italic yellow", "stalled": "bold yellow"}


class LeftoversTable(DataTable):
    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.add_column("state", key="state")
        self.add_column("kind", key="kind")
        self.add_column("name", key="name")
        self.add_column("component", key="component")
        self.add_column("lived on", key="after")
        self.items: list[Leftover] = []
        self.filter = ""

    def show(self, leftovers: tuple[Leftover, ...] | list[Leftover]) -> None:
        self.items = list(leftovers)
        self._render_rows()

    def set_filter(self, text: str) -> None:
        self.filter = text.lower()
        self._render_rows()

    def visible(self) -> list[Leftover]:
        f = self.filter
        return [x for x in self.items if not f or f in x.name.lower() or f in x.component.lower()
                or f in x.state]

    def _render_rows(self) -> None:
        self.clear()
        for i, x in enumerate(self.visible()):
            style = STYLE[x.state]
            after = "still alive" if x.exited_after_ms is None else f"{x.exited_after_ms:g} ms"
            if x.state == "ignored":
                after = "ignored"
            elif x.kind == "memory":
                after = "retained"
            elif x.kind == "stall":
                after = "warning"
            self.add_row(Text(x.state.upper() if x.state in ("leaked", "destroyed", "stalled") else x.state, style=style),
                         Text(x.kind, style=style), Text(x.name, style=style),
                         Text(x.component, style=style), Text(after, style=style), key=str(i))

    def selected(self) -> Leftover | None:
        rows = self.visible()
        if not rows or self.cursor_row is None or not 0 <= self.cursor_row < len(rows):
            return None
        return rows[self.cursor_row]


_NO_STACK = {"socket": "(a descriptor has no stack)", "fd": "(a descriptor has no stack)",
             "process": "(a process: see its pid and command line)", "timer": "(a timer has no stack)",
             "memory": "(retained objects have no stack; trace_memory = true says where they were allocated)"}


class StackView(Static):
    DEFAULT_CSS = """
    StackView { padding: 0 1; }
    """

    def nothing_left(self) -> None:
        self.update(Text("nothing new was alive when close returned:\nevery task and thread the bus "
                         "started had already exited", style="green"))

    def show(self, x: Leftover | None) -> None:
        if x is None:
            self.update(Text("select a leftover to see its stack", style="dim"))
            return
        text = Text()
        text.append(f"{x.kind} {x.name}", style="bold " + STYLE[x.state].replace("dim", ""))
        if x.detail:
            text.append(f"\n{x.detail}", style="dim")
        if x.created_at:
            verb = "allocated" if x.kind == "memory" else "created"
            text.append(f"\n{verb} at {x.created_at}", style="cyan")
        if x.kind == "stall":
            text.append("\nthe event loop's stack during the stall:", style="dim")
        for line in x.stack or (_NO_STACK.get(x.kind, "(no stack: it had exited)"),):
            text.append(f"\n  {line}")
        self.update(text)
