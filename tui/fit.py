"""A table of measures (rows) by runs or backends (columns) that never cuts a number.

Rich cuts a cell with ``…`` when a table is wider than the terminal (and a pipe or a CI log is
80 columns to rich). Here the label column wraps between words first; when the columns still do
not fit, they are printed in groups, each under the same labels; a single column wider than the
terminal wraps between the words of its cells. Only a word wider than the whole terminal is
folded onto the next line, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

#: the label column wraps, but not narrower than this (or its longest word)
LABEL_MIN = 12


@dataclass
class FitTable:
    """Labels down the left, one column per run (or backend); rows in sections."""

    title: str                                   # rich markup
    labels: list[str] = field(default_factory=list)   # rich markup, one per row
    columns: list[tuple[str, list[str]]] = field(default_factory=list)  # (header, cells), markup
    caption: str | None = None
    section_after: set[int] = field(default_factory=set)  # row indices that end a section

    def add_row(self, label: str, cells: list[str]) -> None:
        if not self.columns:
            raise ValueError("add the columns first")
        self.labels.append(label)
        for (_, col), cell in zip(self.columns, cells):
            col.append(cell)

    def add_section(self) -> None:
        if self.labels:
            self.section_after.add(len(self.labels) - 1)

    def room(self, width: int) -> int:
        """What is left of ``width`` for the columns beside the labels, wrapped as far as they go."""
        label = max([LABEL_MIN, *(_longest_word(x) for x in self.labels)])
        label = min(label, max((_width(x) for x in self.labels), default=label))
        return width - (label + 2) - 2   # the label column with its padding, the table's two edges

    def need(self, i: int) -> int:
        """Column ``i`` unwrapped, with its padding and the divider before it."""
        header, cells = self.columns[i]
        return max(_width(header), *(_width(c) for c in cells), 1) + 3

    def groups(self, width: int) -> list[list[int]]:
        """The columns in groups that fit ``width`` beside the (wrapped) labels."""
        room = self.room(width)
        groups: list[list[int]] = []
        used = 0
        for i in range(len(self.columns)):
            need = self.need(i)
            if groups and used + need <= room:
                groups[-1].append(i)
                used += need
            else:
                groups.append([i])
                used = need
        return groups

    def tables(self, width: int) -> list[Table]:
        groups = self.groups(width)
        out = []
        for n, group in enumerate(groups):
            table = Table(title=self.title if n == 0 else None, box=box.SIMPLE_HEAD,
                          caption=self.caption if n == len(groups) - 1 else None)
            table.add_column("", no_wrap=False)
            for i in group:
                # alone and still too wide: it wraps between the words of its cells
                too_wide = self.need(i) > self.room(width)
                table.add_column(self.columns[i][0], justify="right", no_wrap=not too_wide, overflow="fold")
            for r, label in enumerate(self.labels):
                table.add_row(label, *(self.columns[i][1][r] for i in group),
                              end_section=r in self.section_after)
            out.append(table)
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        tables = self.tables(options.max_width)
        for n, table in enumerate(tables):
            if n:
                yield Text("")
            yield table


def _width(markup: str) -> int:
    return cell_len(Text.from_markup(markup).plain)


def _longest_word(markup: str) -> int:
    return max((cell_len(w) for w in Text.from_markup(markup).plain.split()), default=0)
