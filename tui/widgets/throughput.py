"""Throughput and delivery: rates, latency, the audit, and a progress bar during load."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import ProgressBar

from busmon.probes.model import RunResult, Sample


class Rates(Widget):
    """The numbers, redrawn in place: a fixed-height widget whose refresh never re-lays out the
    screen (``Static.update`` would, on every sample, and cost the bus throughput)."""

    DEFAULT_CSS = """
    Rates { height: 5; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sample: Sample | None = None
        self.final: RunResult | None = None
        self._stacked = False
        #: a running program (busmon attach): no load of busmon's, so its process's figures
        self.program = False

    def render(self) -> Text:
        """Five fixed-width lines of label/value pairs (plain Text: cheaper than a rich Table).

        Live rates while a run goes; once it has finished, its averages and its audit. Where the
        full figures do not fit (80 columns), counts are shortened (``31.3k``) and the averages'
        ``avg`` dropped (the border title says so); narrower still, the labels are shortened
        (``pub``, ``d/o``); narrower than that, one pair a line. A figure is never cut."""
        width = self.size.width
        for compact, tight in ((False, False), (True, False), (True, True)):
            text = self._text(compact, tight)
            if not text.plain or _widest(text) <= width:
                self._stack(False)
                return text
        self._stack(True)
        return self._text(True, True, stacked=True)

    def _stack(self, stacked: bool) -> None:
        """Room for one pair a line (ten lines) only while even the tight form cannot fit: a
        change of height re-lays out the screen, so it is made only when the form changes."""
        if stacked != self._stacked:
            self._stacked = stacked
            self.call_later(lambda: setattr(self.styles, "height", 10 if stacked else 5))

    def _text(self, compact: bool, tight: bool = False, stacked: bool = False) -> Text:
        s, final = self.sample, self.final
        num = short_count if compact else (lambda n: f"{n:,.0f}")
        ms = _short_ms if compact else (lambda v: f"{v:.2f}ms")
        if s is None and final is None:
            return Text()
        if self.program:
            rows = program_rows(s, final, num, compact)
        elif final is not None:
            t = final.throughput
            lat = t.get("latency_ms") or {}
            pub, dlv, label = t.get("publish_per_s", 0), t.get("deliver_per_s", 0), "" if compact else "avg "
        else:
            assert s is not None
            lat = s.latency_ms or {}
            pub, dlv, label = s.publish_per_s, s.deliver_per_s, ""
        if not self.program:
            rows = [
                (f"{label}pub/s", num(pub), f"{label}del/s", num(dlv)),
                ("p50", ms(lat.get('p50', 0)), "p99", ms(lat.get('p99', 0))),
            ]
        if self.program:
            pass
        elif final is not None:
            delivery = final.delivery
            lost = delivery.get("lost", 0)
            rows.append(("sent", num(delivery.get('sent', 0)), "recv", num(delivery.get('received', 0))))
            rows.append(("lost", Text(f"{lost:,}", style="red" if lost else "green"),
                         "dup/ord", f"{delivery.get('duplicated', 0)}/{delivery.get('reordered', 0)}"))
            worst = (final.worst_stall() or {}).get("duration_ms", 0.0)
            lag_max = max((p.loop_lag_ms.get("max_ms", 0.0) for p in final.phases), default=0.0)
            rows.append(("lag max", f"{lag_max:,.0f}ms",
                         "stalls", Text(f"{len(final.stalls)}" + (f" ≤{worst:,.0f}ms" if worst and not compact else ""),
                                        style="yellow" if final.stalls else "green")))
        else:
            assert s is not None
            rows.append(("sent", num(s.published), "recv", num(s.delivered)))
            rows.append(("rss MB", f"{s.rss_mb:,.0f}", "sockets", f"{s.sockets}"))
            lag = s.loop_lag_ms or {}
            stalls = f" ·{s.stalls} stall{'s' if s.stalls > 1 else ''}" if s.stalls and not compact else ""
            rows.append(("lag p99" if compact else "lag p50/99",
                         f"{lag.get('p99_ms', 0):.1f}ms" if compact else
                         f"{lag.get('p50_ms', 0):.1f}/{lag.get('p99_ms', 0):.1f}ms",
                         "max", Text(f"{lag.get('max_ms', 0):,.0f}ms" + stalls, style="yellow" if s.stalls else "")))
        label = (lambda t: TIGHT_LABELS.get(t, t)) if tight else (lambda t: t)
        cells = [(label(l1), _cell(v1), label(l2), _cell(v2)) for l1, v1, l2, v2 in rows]
        if stacked:  # one pair a line, in the same order
            cells = [pair for l1, v1, l2, v2 in cells for pair in ((l1, v1, "", ("", "")), (l2, v2, "", ("", "")))]
        w = [max(len(c[i]) if i in (0, 2) else len(c[i][0]) for c in cells) for i in range(4)]
        # two spaces between a figure and the next label when they fit, never fewer than one
        gap = "  " if sum(w) + 6 <= self.size.width else " "
        text = Text()
        for n, (l1, (v1, s1), l2, (v2, s2)) in enumerate(cells):
            if n:
                text.append("\n")
            text.append(f"{l1:<{w[0]}} ", style="dim")
            text.append(f"{v1:>{w[1]}}", style=s1)
            if l2:
                text.append(f"{gap}{l2:<{w[2]}} ", style="dim")
                text.append(f"{v2:>{w[3]}}", style=s2)
        return text


Row = tuple[str, "str | Text", str, "str | Text"]


def program_rows(s: Sample | None, final: RunResult | None, num, compact: bool) -> list[Row]:
    """A running program's figures: its tasks, threads, memory, descriptors and loop, live;
    once judged, what was left and how long judging took."""
    if final is not None:
        leaked = final.count("leaked")
        worst = (final.worst_stall() or {}).get("duration_ms", 0.0)
        lag_max = max((p.loop_lag_ms.get("max_ms", 0.0) for p in final.phases), default=0.0)
        return [("leaked", Text(f"{leaked:,}", style="red" if leaked else "green"), "exited", num(final.count("exited"))),
                ("ignored", num(final.count("ignored")), "settle", f"{final.settle_ms:,.0f}ms"),
                ("verdict", f"{final.verdict_ms:,.0f}ms", "rss MB", f"{final.phases[-1].rss_mb:,.0f}" if final.phases else "–"),
                ("lag max", f"{lag_max:,.0f}ms", "stalls", Text(f"{len(final.stalls)}" + (
                    f" ≤{worst:,.0f}ms" if worst and not compact else ""), style="yellow" if final.stalls else "green"))]
    assert s is not None
    lag = s.loop_lag_ms or {}
    stalls = f" ·{s.stalls} stall{'s' if s.stalls > 1 else ''}" if s.stalls and not compact else ""
    return [("tasks", num(s.tasks), "threads", f"{s.threads}/{s.os_threads}"),
            ("rss MB", f"{s.rss_mb:,.0f}", "new sockets", f"{s.sockets}"),
            ("fds", num(s.open_fds), "cpu %", f"{s.cpu_percent:,.0f}"),
            ("lag p99" if compact else "lag p50/99",
             f"{lag.get('p99_ms', 0):.1f}ms" if compact else f"{lag.get('p50_ms', 0):.1f}/{lag.get('p99_ms', 0):.1f}ms",
             "max", Text(f"{lag.get('max_ms', 0):,.0f}ms" + stalls, style="yellow" if s.stalls else ""))]


#: the labels at their shortest (the help and the wider forms say them in full)
TIGHT_LABELS = {"pub/s": "pub", "del/s": "del", "dup/ord": "d/o", "rss MB": "MB", "sockets": "sock", "new sockets": "+sock",
                "lag p99": "lag", "lag max": "lag", "stalls": "stl"}


def _widest(text: Text) -> int:
    return max(len(line) for line in text.plain.split("\n"))


def short_count(n: float) -> str:
    """``5,004``, ``31.3k``, ``1.2M``: a count in at most six characters."""
    if abs(n) < 10_000:
        return f"{n:,.0f}"
    if abs(n) < 1_000_000:
        return f"{n / 1e3:.1f}k"
    return f"{n / 1e6:.1f}M"


def _short_ms(v: float) -> str:
    """``0.04ms``, ``10.3ms``, ``250ms``: a latency in at most six characters below 10 s."""
    return f"{v:.2f}ms" if v < 10 else f"{v:.1f}ms" if v < 100 else f"{v:,.0f}ms"


def _cell(value: str | Text) -> tuple[str, str]:
    """A value and its style."""
    if isinstance(value, Text):
        return value.plain, str(value.style)
    return value, ""


LIVE_TITLE = "throughput & delivery"
PROGRAM_TITLE = "the program"


class ThroughputPanel(Vertical):
    DEFAULT_CSS = """
    ThroughputPanel { height: auto; }
    ThroughputPanel > ProgressBar { height: 1; }
    """

    def compose(self) -> ComposeResult:
        yield Rates()
        # a known total from the start: an indeterminate bar animates (redraws) all the time
        yield ProgressBar(total=1, show_eta=False, id="progress")

    def for_program(self) -> None:
        """busmon attach: a running program's figures, not a load's (no progress to show)."""
        self.query_one(Rates).program = True
        self.query_one(ProgressBar).display = False
        self.border_title = PROGRAM_TITLE

    def show(self, s: Sample) -> None:
        """A live sample (clears a finished run's figures once the next run is under way)."""
        rates = self.query_one(Rates)
        rates.sample = s
        if s.phase not in ("", "settle") and rates.final is not None and rates.final.name != s.run:
            rates.final = None
            self.border_title = PROGRAM_TITLE if rates.program else LIVE_TITLE
            self.query_one(ProgressBar).update(total=1, progress=0)  # not the last run's 100 %
        rates.refresh()
        if rates.final is None and s.expected:
            self.query_one(ProgressBar).update(total=s.expected, progress=s.delivered)

    def finished(self, r: RunResult) -> None:
        """The run's own figures: average rates, latency, the delivery audit."""
        rates = self.query_one(Rates)
        rates.final = r
        self.border_title = r.name if rates.program else f"{r.name}: averages"
        rates.refresh()
        sent = r.delivery.get("sent", 0)
        self.query_one(ProgressBar).update(total=sent or 1, progress=r.delivery.get("received", 0))
