"""Leftovers after close: leaked in red, exited dimmed with their exit time, ignored labelled;
the selected one's stack beside it."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable, Static

from busmon.probes.model import Leftover
from busmon.tui.state import matches
from busmon.tui.words import count

STYLE = {"leaked": "bold red", "destroyed": "bold red", "unknown": "yellow", "exited": "dim",
         "ignored": "italic yellow", "stalled": "bold yellow"}
COLUMNS = (("state", "state"), ("kind", "kind"), ("name", "name"), ("component", "component"),
           ("lived on", "after"))
_WRAPPED = ("name", "component")   # what gives way when the table is narrow: wrapped, never cut


def fit_widths(natural: list[int], wrapped: list[int], room: int, least: int = 8) -> list[int | None]:
    """Column widths within ``room`` cells: each column its natural width (None) when all fit;
    else the ``wrapped`` columns share what the others leave, the widest narrowed first (their
    cells then wrap, so no figure inside a name is ever cut), none below ``least``."""
    if sum(natural) <= room:
        return [None] * len(natural)
    left = room - sum(w for i, w in enumerate(natural) if i not in wrapped)
    widths = {i: natural[i] for i in wrapped}
    while sum(widths.values()) > max(left, least * len(wrapped)):
        widest = max(widths, key=lambda i: (widths[i], -i))
        if widths[widest] <= least:
            break
        widths[widest] -= 1
    return [widths.get(i) for i in range(len(natural))]


class LeftoversTable(DataTable):
    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.items: list[Leftover] = []
        self.filter = ""
        self._room = -1
        self._render_rows()

    def show(self, leftovers: tuple[Leftover, ...] | list[Leftover]) -> None:
        self.items = list(leftovers)
        self._render_rows()

    def set_filter(self, text: str) -> None:
        self.filter = text.lower()
        self._render_rows()

    def visible(self) -> list[Leftover]:
        return [x for x in self.items if matches(x, self.filter)]

    def on_resize(self) -> None:
        if self._room != self._space(len(self.visible())):
            self._render_rows()

    def _space(self, rows: int = 0) -> int:
        """Cells the columns' text may take: the width inside the border less each column's
        padding, and less a scroll bar's when the rows will not all show."""
        bar = self.styles.scrollbar_size_vertical if rows + 1 > self.content_size.height else 0
        return max(0, self.content_size.width - 2 * self.cell_padding * len(COLUMNS) - bar)

    def _render_rows(self) -> None:
        row = self.cursor_row
        rows = [_cells(x) for x in self.visible()]
        self._room = self._space(len(rows))
        natural = [max([len(label)] + [r[i].cell_len for r in rows]) for i, (label, _) in enumerate(COLUMNS)]
        wrapped = [i for i, (_, key) in enumerate(COLUMNS) if key in _WRAPPED]
        widths = fit_widths(natural, wrapped, self._room) if self._room else [None] * len(COLUMNS)
        self.clear(columns=True)
        for (label, key), width in zip(COLUMNS, widths, strict=True):
            self.add_column(label, key=key, width=width)
        narrow = any(w is not None for w in widths)
        for i, cells in enumerate(rows):
            self.add_row(*cells, key=str(i), height=None if narrow else 1)
        if rows and row:
            self.move_cursor(row=min(row, len(rows) - 1))

    def selected(self) -> Leftover | None:
        rows = self.visible()
        if not rows or self.cursor_row is None or not 0 <= self.cursor_row < len(rows):
            return None
        return rows[self.cursor_row]


def _cells(x: Leftover) -> tuple[Text, ...]:
    style = STYLE[x.state]
    after = "still alive" if x.exited_after_ms is None else f"{x.exited_after_ms:g} ms"
    if x.state == "ignored":
        after = "ignored"
    elif x.kind == "memory":
        after = "retained"
    elif x.kind == "stall":
        after = "warning"
    state = x.state.upper() if x.state in ("leaked", "destroyed", "stalled") else x.state
    return (Text(state, style=style), Text(x.kind, style=style), Text(x.name, style=style),
            Text(x.component, style=style), Text(after, style=style))


_NO_STACK = {"socket": "(a descriptor has no stack)", "fd": "(a descriptor has no stack)",
             "process": "(a process: see its pid and command line)", "timer": "(a timer has no stack)",
             "memory": "(retained objects have no stack; trace_memory = true says where they were allocated)"}


def frame_lines(frame: str, width: int) -> list[str]:
    """One stack frame (``tests/leaky_buses.py:42 in _forever``) as the pane shows it: on one
    line when it fits in ``width``, else where it is and ``in`` what on lines of their own, so
    the function's name is never parted from its file."""
    line = f"  {frame}"
    where, sep, func = frame.rpartition(" in ")
    if len(line) <= width or not sep:
        return [line]
    return [f"  {where}", f"    in {func}"]


class StackView(Static):
    DEFAULT_CSS = """
    StackView { padding: 0 1; }
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.leftover: Leftover | None = None
        self._drawn_width = -1

    def nothing_left(self, program: bool = False) -> None:
        """Nothing to show: said in the words of what was judged (a bus's close, or a program)."""
        self.leftover = None
        if program:
            self.update(Text("nothing new was alive at the verdict:\neverything the program started since the "
                             "baseline had exited", style="green"))
            return
        self.update(Text("nothing new was alive when close returned:\nevery task and thread the bus "
                         "started had already exited", style="green"))

    def all_filtered(self, n: int, text: str) -> None:
        """The filter hides every leftover: say so, not the stack of one no longer listed."""
        self.leftover = None
        what = "the only leftover" if n == 1 else f"all {count(n, 'leftover')}"
        self.update(Text(f'the filter "{text}" hides {what}: esc clears it', style="magenta"))

    def on_resize(self) -> None:
        if self.leftover is not None and self._drawn_width != self.content_size.width:
            self.show(self.leftover)

    def show(self, x: Leftover | None) -> None:
        self.leftover = x
        if x is None:
            self.update(Text("select a leftover to see its stack", style="dim"))
            return
        width = self._drawn_width = self.content_size.width or 10_000
        text = Text()
        text.append(f"{x.kind} {x.name}", style="bold " + STYLE[x.state].replace("dim", ""))
        if x.detail:
            text.append(f"\n{x.detail}", style="dim")
        if x.created_at:
            verb = "allocated" if x.kind == "memory" else "created"
            text.append(f"\n{verb} at {x.created_at}", style="cyan")
        if x.kind == "stall":
            text.append("\nthe event loop's stack during the stall:", style="dim")
        for frame in x.stack or ():
            for line in frame_lines(frame, width):
                text.append(f"\n{line}")
        if not x.stack:
            text.append(f"\n  {_NO_STACK.get(x.kind, '(no stack: it had exited)')}")
        self.update(text)
