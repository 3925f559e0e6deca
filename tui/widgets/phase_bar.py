"""The header: where you are (run, phase, time), what is connected, and what n does next.

Two lines, both rendered from the dashboard's ``DashState`` (tui/state.py):

    baseline›create›SUBSCRIBE›load›hold›close›settle  run 2/4 main 3.2s
    n → load · nats nats://bob:***@127.0.0.1:4222 · every 100 ms · PAUSED · filter "pool"
"""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from busmon.probes.model import PHASES
from busmon.tui.state import DashState


#: a program's marks shown in the header at most (the oldest give way to "…")
MARKS_SHOWN = 4


def phase_names(st: DashState) -> list[str]:
    """The phases the header names: a played run's fixed ones; a program's (busmon attach) its
    baseline, its last marks and the phase under way, as they come."""
    if st.backend != "program":
        return [p for p in PHASES if p != "hold" or st.hold]
    names = list(dict.fromkeys([s.phase for s in st.snapshots if s.phase not in ("baseline", "settle")]
                               + ([st.phase] if st.phase and st.phase not in ("baseline", "settle") else [])))
    shown = (["…"] if len(names) > MARKS_SHOWN else []) + names[-MARKS_SHOWN:]
    return ["baseline", *shown, *(["settle"] if st.phase == "settle" or st.finished else [])]


class PhaseBar(Widget):
    DEFAULT_CSS = """
    PhaseBar { height: 2; background: $panel; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    state: reactive[DashState] = reactive(DashState, always_update=True)

    # what the tests and the app read back
    @property
    def run(self) -> str:
        return self.state.run

    @property
    def phase(self) -> str:
        return self.state.phase

    @property
    def waiting_for(self) -> str:
        return self.state.waiting_for

    def render(self) -> Text:
        st, wide = self.state, self.size.width >= 110
        text = Text(" busmon ", style="bold reverse") if wide else Text()
        text.append(" ")
        if st.viewing:  # a finished run shown again: say which, not the live run's phases
            text.append(f" SHOWING RUN {st.viewing} ", style="bold black on magenta")
            text.append(f"  (live: {st.run_label()})", style="dim")
            text.append("\n")
            text.append(self._status(st))
            return text
        lit = st.lit
        for i, name in enumerate(phase_names(st)):
            if i:
                text.append(" › " if wide else "›", style="dim")
            if name == lit:
                style = "bold white on red" if st.failed and st.failed[0] == name else "bold black on yellow"
                text.append(f" {name.upper()} ", style=style)
            elif st.failed and name == st.failed[0]:  # where the run failed stays marked
                text.append(f"{name}✗", style="bold red")
            elif name == st.waiting_for:
                text.append(f" {name} ", style="bold underline")
            elif name in st.done or name == "…":
                text.append(name, style="green")
            else:
                text.append(name, style="dim")
        if st.run:  # the run's name gives way before its number and clock: never cut mid-word
            label, clock = st.run_label(), f" {st.elapsed_s:.1f}s"
            short = label.rsplit(" ", 1)[0] if label.startswith("run ") and " " in label[4:] else label
            for run, time in ((label, clock), (short, clock), (short, "")):
                if text.cell_len + 2 + len(run) + len(time) <= self.size.width:
                    break
            text.append(f"  {run}", style="bold")
            text.append(time, style="dim")
        text.append("\n")
        text.append(self._status(st))
        return text

    def _status(self, st: DashState) -> Text:
        return status_line(st, self.size.width)


def status_line(st: DashState, width: int = 10_000) -> Text:
    """What n does, lasting marks (paused, filtered, a passing note), then what is connected and
    how often busmon looks: the most urgent first. Within ``width`` the tail gives way first,
    by steps (``every 100 ms`` → ``100 ms``, the target, ``(embedded)``, the interval), then the
    hint says itself in fewer words, then the backend goes: a word is never cut."""
    marks: list[tuple[str, str]] = []
    if st.replay:
        marks.append((f" {st.replay} ", "bold black on cyan"))
    if st.attached:
        marks.append((f" {st.attached} ", "bold black on green"))
    if st.recording:
        marks.append((f" REC {st.recording} ", "bold white on red"))
    if st.paused:
        marks.append((" PAUSED (space) ", "bold black on yellow"))
    if mark := st.filter_word():
        marks.append((mark, "bold magenta"))
    if st.note:
        marks.append((st.note, "italic cyan"))
    target = st.target if st.target and st.target not in (st.backend, f"{st.backend}://") else ""
    embedded = not target and st.backend == "memory"
    every = f"every {st.interval_ms} ms"
    short = f"{st.interval_ms} ms"
    tails = [(target or ("(embedded)" if embedded else ""), every), (target or ("(embedded)" if embedded else ""), short),
             ("(embedded)" if embedded else "", short), ("", short), ("", "")]
    tries = [(st.next_key(), st.backend, *tail) for tail in tails]
    tries += [(st.next_key(short=True), st.backend, *tail) for tail in tails] + [(st.next_key(short=True), "", "", "")]
    line = Text(" ")
    for hint, backend, where, interval in tries:
        words = [[part] for part in ([(hint, "bold cyan")] if hint else []) + marks]
        if backend:
            words.append([(backend, "bold")] + ([(f" {where}", "dim" if where == "(embedded)" else "")]
                                                if where else []))
        if interval:
            words.append([(interval, "dim")])
        line = Text(" ")
        for i, word in enumerate(words):
            if i:
                line.append(" · ", style="dim")
            for text, style in word:
                line.append(text, style=style)
        if line.cell_len <= width:
            return line
    return line
