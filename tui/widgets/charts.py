"""Live charts: a sparkline per series, coloured by phase so phase boundaries show."""

from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.widget import Widget

LEGEND_NAMES = {"baseline": "base", "subscribe": "sub"}
BARS = "▁▂▃▄▅▆▇█"
PHASE_COLOURS = {
    "baseline": "grey50", "create": "cyan", "subscribe": "blue", "load": "yellow",
    "hold": "orange3", "close": "red", "settle": "green",
}


class PhaseChart(Widget):
    """One series (label, latest value, bars); the colour of each bar is the phase it was in."""

    DEFAULT_CSS = """
    PhaseChart { height: 1; }
    """

    def __init__(self, label: str, unit: str = "", history: int = 6000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.label = label
        self.unit = unit
        self.points: deque[tuple[float, str]] = deque(maxlen=history)

    def push(self, value: float, phase: str) -> None:
        self.points.append((value, phase))

    def clear_points(self) -> None:
        self.points.clear()

    def render(self) -> Text:
        width = max(10, self.size.width)
        label_w = 22
        latest = self.points[-1][0] if self.points else 0
        head = f"{self.label} {latest:,.0f}{self.unit}"
        text = Text(head[:label_w].ljust(label_w), style="bold")
        span = max(0, width - label_w)
        pts = _fit(list(self.points), span)
        top = max((v for v, _ in pts), default=0) or 1
        # one span per run of same-phase bars, not one per bar: far fewer segments to composite
        run_phase, run_bars = None, []
        for value, phase in pts:
            i = min(len(BARS) - 1, int(value / top * (len(BARS) - 1) + 0.5)) if value > 0 else 0
            if phase != run_phase and run_bars:
                text.append("".join(run_bars), style=PHASE_COLOURS.get(run_phase, "white"))
                run_bars = []
            run_phase = phase
            run_bars.append(BARS[i])
        if run_bars:
            text.append("".join(run_bars), style=PHASE_COLOURS.get(run_phase, "white"))
        return text


def _fit(points: list[tuple[float, str]], span: int) -> list[tuple[float, str]]:
    """The whole run in ``span`` bars: each bar the peak of its share of samples (or a sample
    repeated, when there are fewer), in the phase of its last sample, so a run of any length
    keeps its shape and its phase boundaries across the whole width."""
    if span <= 0:
        return []
    if len(points) < span:
        # fewer samples than bars (a fast run): stretch them over the width, so even a run of
        # three samples shows its shape, not three bars at the left edge
        return [points[i * len(points) // span] for i in range(span)] if len(points) > 1 else points
    if len(points) == span:
        return points
    out = []
    step = len(points) / span
    for i in range(span):
        chunk = points[int(i * step): max(int((i + 1) * step), int(i * step) + 1)]
        out.append((max(v for v, _ in chunk), chunk[-1][1]))
    return out


def legend(program: bool = False) -> Text:
    """What the bars' colours mean: the bus's phases, or (a program, busmon attach) baseline,
    the program's own marks, settle."""
    if program:
        text = Text()
        for name, colour in (("baseline", PHASE_COLOURS["baseline"]), ("its marks", "white"),
                             ("settle", PHASE_COLOURS["settle"])):
            text.append("■", style=colour)
            text.append(f"{name} ", style="dim")
        return text
    text = Text()
    for name, colour in PHASE_COLOURS.items():
        text.append("■", style=colour)
        text.append(f"{LEGEND_NAMES.get(name, name)} ", style="dim")
    return text
