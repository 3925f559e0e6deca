"""The phase bar: every phase, the current one lit, the run's name and elapsed time."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from probes.model import PHASES


class PhaseBar(Widget):
    DEFAULT_CSS = """
    PhaseBar { height: 1; background: $panel; }
    """

    run = reactive("")
    phase = reactive("")
    elapsed = reactive(0.0)
    waiting_for = reactive("")       # interactive: the phase a key press will start
    done: reactive[frozenset[str]] = reactive(frozenset())

    def render(self) -> Text:
        wide = self.size.width >= 110
        text = Text(" busmon ", style="bold reverse") if wide else Text()
        text.append(" ")
        for i, name in enumerate(PHASES):
            if i:
                text.append(" › " if wide else "›", style="dim")
            if name == self.phase:
                text.append(f" {name.upper()} ", style="bold black on yellow")
            elif name == self.waiting_for:
                text.append(f" {name} ", style="bold underline")
            elif name in self.done:
                text.append(name, style="green")
            else:
                text.append(name, style="dim")
        if self.run:
            text.append(f"  {self.run}" if not wide else f"   run {self.run}", style="bold")
            text.append(f" {self.elapsed:.1f}s", style="dim")
        if self.waiting_for:
            text.append(f"  n → {self.waiting_for}", style="bold cyan")
        return text
