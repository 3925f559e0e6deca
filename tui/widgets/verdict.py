"""The verdict banner: clean / leaked / failed, impossible to miss."""

from __future__ import annotations

from textual.widgets import Static

from busmon.probes.verdict import findings
from busmon.probes.harness.logs import LogLine
from busmon.probes.model import RunResult
from busmon.tui.words import count, plural


class VerdictBanner(Static):
    DEFAULT_CSS = """
    VerdictBanner { height: auto; padding: 0 1; background: $panel; color: $text-muted; }
    VerdictBanner.-clean { background: $success; color: $text; text-style: bold; }
    VerdictBanner.-leaked { background: $error; color: $text; text-style: bold; }
    VerdictBanner.-failed { background: $warning; color: $text; text-style: bold; }
    VerdictBanner.-interrupted { background: $warning; color: $text; text-style: bold; }
    """

    def show_state(self, banner: tuple[str, ...], final: RunResult | None, logs: tuple[LogLine, ...] = ()) -> None:
        """Render the dashboard model's banner (tui/state.py)."""
        if banner[0] == "verdict" and final is not None:
            self.show(final, logs)
        elif banner[0] == "failing":
            self.failing(banner[1], banner[2], banner[3] if len(banner) > 3 else "error")
        else:
            self.waiting(banner[1] if len(banner) > 1 else "")

    def waiting(self, text: str) -> None:
        self.remove_class("-clean", "-leaked", "-failed", "-interrupted")
        self.update(text)

    def failing(self, phase: str, error: str, kind: str = "error") -> None:
        """The run just failed, or was interrupted (Ctrl-C, q): say where and why at once, while
        busmon closes and settles; an interrupted run is never called failed."""
        word = "interrupted" if kind == "interrupted" else "failed"
        self.remove_class("-clean", "-leaked", "-failed", "-interrupted")
        self.add_class(f"-{word}")
        self.update(f"{word.upper()} in {phase}: {error} — closing the bus and settling…")

    def show(self, r: RunResult, logs: tuple[LogLine, ...] = ()) -> None:
        self.remove_class("-clean", "-leaked", "-failed", "-interrupted")
        self.add_class(f"-{r.verdict}")
        leaked = findings.leaks(r)
        exited, ignored = r.count("exited"), r.count("ignored")
        if r.verdict == "leaked":
            names = ", ".join(x.name for x in leaked[:3]) + (" …" if len(leaked) > 3 else "")
            text = f"LEAKED  run {r.name}: {len(leaked)} still alive after settling: {names}"
        elif r.verdict in ("failed", "interrupted"):  # interrupted: Ctrl-C or q cut the run short
            text = f"{r.verdict.upper()}  run {r.name}: {r.error}"
        else:
            text = f"CLEAN  run {r.name}: nothing it started is alive"
        extra = []
        if exited:
            slowest = max(x.exited_after_ms or 0 for x in r.leftovers if x.state == "exited")
            extra.append(f"{exited} exited while settling (slowest after {slowest:.1f} ms)")
        if ignored:
            extra.append(f"{ignored} ignored")
        if (longest := r.worst_stall()) is not None:
            worst = longest["duration_ms"]
            extra.append(f"{count(len(r.stalls), 'loop stall')} (worst {worst:,.0f} ms)")
        if r.verdict == "leaked" and any(x.state == "leaked" for x in r.leftovers):
            extra.append(f"waited the full {r.settle_ms / 1000:.1f} s settle deadline")
        elif r.verdict == "clean":
            extra.append(f"settled in {r.settle_ms:.1f} ms")
        if r.paused_ms >= 1000:  # a person's wait before asking for the verdict is not the bus's
            extra.append(f"you looked {r.paused_ms / 1000:.1f} s later")
        if logs:  # the libraries' complaints, counted, never sprayed on the screen
            top = logs[0]
            more = f" (+{len(logs) - 1} more {plural('kind', len(logs) - 1)})" if len(logs) > 1 else ""
            extra.append(f"library logs: {top.describe(70)}{more}")
        self.update(text + ("  ·  " + " · ".join(extra) if extra else ""))
