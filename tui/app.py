"""The busmon dashboard (Textual).

The bus runs on the arena thread; this app never touches it. Events arrive on a
thread-safe queue that a timer drains (10 Hz), so the bus never waits for the
screen and Textual's own tasks never show up in the counts.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import replace
from datetime import datetime
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator

from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from rich.text import Text
from textual.widgets import DataTable, Footer, Input, Static

from busmon.bus.secrets import redact_url, scrub
from busmon.probes.harness.events import ArenaEvent
from busmon.probes.harness.gate import AwaitingStep
from busmon.probes.harness.logs import CAPTURE
from busmon.probes.verdict import findings
from busmon.probes.model import PhaseSnapshot, PhaseStarted, RunResult, Sample, ScenarioResult, signed
from busmon.probes.model import RunFinished
from busmon.probes.recording.reader import CUT_SHORT
from busmon.tui.controller import Controller, PlaybackDone
from busmon.tui.headless import VERDICT_STYLE
from busmon.tui.run_output import naive_count
from busmon.tui.state import (AttachedTo, DashState, Filtered, IntervalSet, NextPressed, Noted, Paused, ReplayAt,
                              RunDone, Viewing, reduce)
from busmon.tui.widgets import (ComponentsTable, LeftoversTable, PhaseBar, PhaseChart, PhaseTable, StackView,
                         ThroughputPanel, VerdictBanner)
from busmon.tui.widgets.charts import legend
from busmon.tui.widgets.throughput import LIVE_TITLE, short_count

INTERVALS_MS = (50, 100, 200, 500, 1000)
SCREENSHOT_FOLDER = "busmon-screenshots"  # where e saves, under the folder busmon was started from
DRAIN_EVERY_S = 0.1    # events arrive at the sampling rate (10 Hz); phase changes show within 0.1 s
RENDER_EVERY_S = 0.25  # the screen redraws the numbers 4x a second; every sample still reaches the charts
NOTE_S = 6.0           # how long a passing note stays in the header
PARK_WAIT_S = 1.0      # how long the arena waits for the dashboard to park before judging memory anyway
PARK_MAX_S = 10.0      # the longest the dashboard stays parked, whatever the arena does

HELP = """\
[b]busmon[/b] drives an embedded event bus through its phases and shows,
by identity, what it leaves behind once it has properly settled.

 [b]n[/b]      next phase: baseline → create → subscribe → load → (hold)
         → close → settle; after settle, a new run with a fresh bus
         (watch accumulation). The header says what n starts next, or
         "n: after load" while a phase runs (a press then is kept).
         hold (--hold, hold_s) is an idle wait before close.
 [b]r[/b]      the finished runs side by side (drift against the first
         run's baseline); enter shows one, esc returns to the live run
 [b]space[/b]  pause / resume the display (the probes keep recording)
 [b]+ / -[/b]  sample faster / slower (50 … 1000 ms; shown in the header)
         replaying a recording: play faster / slower (×1/8 … ×64);
         [b]n[/b] jumps to the next phase and pauses there (space plays
         on), [b]end[/b] jumps to the end
 [b]b[/b] [b]v[/b] [b]m[/b]  attached to a running program (busmon attach): [b]b[/b] takes a
         baseline, [b]v[/b] judges what appeared since and is still there,
         [b]m[/b] adds a mark; [b]q[/b] detaches (the program goes on)
 [b]/[/b]      filter the leftovers and components tables (esc clears)
 [b]enter[/b]  on a leftover: its stack, full screen (esc returns)
 [b]e[/b]      export a screenshot (SVG) now, into busmon-screenshots/
 [b]?[/b]      this help (esc closes; ↑ ↓ scroll)
 [b]ctrl+p[/b] command palette
 [b]q[/b]      quit (closes and settles the bus first if it is open; [b]ctrl+q[/b] too)

[b]close (naive)[/b] is the count taken the instant close() returned:
what the post-mortem's test counted. [b]settled[/b] is after waiting for
every exit, then GC.
Leftovers: [red]LEAKED[/red] still alive at the settle deadline; [dim]exited[/dim]
gone while settling (with how long it lived on); [yellow]ignored[/yellow]
runtime-owned or an ignore rule.
Kinds: task, thread, timer, socket and fd (open descriptors), process
(child processes), memory (objects that grew with every envelope and
are still held: a leak), and [yellow]STALLED[/yellow] stall (the event loop
blocked ≥ stall_ms; a warning, with the blocking call).
[b]thr[/b]: Python threads / OS threads; [b]sock[/b]: sockets opened since the
baseline; [b]lag[/b]: how late the loop answers; in runs, [b]drift[/b]:
tasks/threads against the first run's baseline.
"""


def _shot_name(folder: Path) -> str:
    """``busmon-20261206-232602.svg`` (``-2``… when taken within the same second): short enough
    for a toast at 80 columns to show whole."""
    stem = f"busmon-{datetime.now():%Y%m%d-%H%M%S}"
    name, n = f"{stem}.svg", 1
    while (folder / name).exists():
        n += 1
        name = f"{stem}-{n}.svg"
    return name


def _display_folder(folder: Path) -> str:
    """A folder as a person typed it: relative to where busmon was started when it is inside."""
    try:
        return str(folder.resolve().relative_to(Path.cwd().resolve())) or "."
    except ValueError:
        return str(folder)


class HelpScreen(ModalScreen[None]):
    """Every key and what the screen shows; scrolls when the terminal is short (80×24)."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: auto; max-width: 80; height: auto; max-height: 100%;
                                  border: round $primary; padding: 0 1; background: $panel; }
    HelpScreen Static { width: auto; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(HELP)

    def on_mount(self) -> None:
        self.query_one(VerticalScroll).focus()


class StackScreen(Screen[None]):
    """A leftover's stack, full screen: what enter shows (the side panel hides at 80 columns)."""

    BINDINGS = [Binding("escape,enter", "dismiss", "Back"), Binding("q", "app.quit_busmon", "Quit")]

    def __init__(self, leftover) -> None:
        super().__init__()
        self.leftover = leftover

    def compose(self) -> ComposeResult:
        view = StackView()
        view.border_title = "stack (esc to return)"
        yield view
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one(StackView).show(self.leftover)


class RunsScreen(Screen[int | None]):
    """Every finished run side by side, like the headless summary: enter shows one on the main
    screen, esc returns to the live run. Drift is against the first run's baseline."""

    BINDINGS = [Binding("escape,r", "dismiss(None)", "Back"), Binding("enter", "pick", "Show run"),
                Binding("q", "app.quit_busmon", "Quit")]
    DEFAULT_CSS = """
    RunsScreen DataTable { height: 1fr; border: round $primary; }
    RunsScreen #runs-title { height: 1; background: $panel; }
    """

    def __init__(self, results: list[RunResult], scenario: str) -> None:
        super().__init__()
        self.results = results
        self.scenario = scenario

    def compose(self) -> ComposeResult:
        overall = ScenarioResult(self.scenario, tuple(self.results)).verdict
        n = len(self.results)
        yield Static(Text.assemble((f" {self.scenario}", "bold"), f" · {n} run{'s' if n != 1 else ''} · ",
                                   (overall, VERDICT_STYLE.get(overall, ""))), id="runs-title")
        table: DataTable = DataTable(cursor_type="row", zebra_stripes=True)
        table.border_title = "runs (Δ tasks: right after close → settled · enter: show · esc: back)"
        yield table
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        tables = self.query(DataTable)
        if not tables:  # shut down before it was mounted (q, or a test ending): nothing to fill
            return
        table = tables.first()
        if self.results and all(r.backend == "program" for r in self.results):
            self._program_rows(table)
            return
        for label in ("run", "verdict", "recv/sent", "del/s", "p99ms", "Δ tasks", "left/exit", "drift"):
            table.add_column(label)
        for r in self.results:
            left = len(findings.leaks(r))
            close, settled = r.task_delta("close"), r.task_delta("settle")
            table.add_row(
                r.name, Text(r.verdict, style=VERDICT_STYLE.get(r.verdict, "")),
                f"{short_count(r.delivery.get('received', 0))}/{short_count(r.delivery.get('sent', 0))}",
                short_count(r.throughput.get("deliver_per_s", 0)),
                f"{(r.throughput.get('latency_ms') or {}).get('p99', 0):.1f}",
                f"{signed(close)}→{signed(settled)}",
                Text(f"{left}/{r.count('exited')}", style="bold red" if left else "green"),
                f"{r.drift.get('tasks', 0)}t/{r.drift.get('threads', 0)}th" if r.drift else "–")
        table.move_cursor(row=len(self.results) - 1)
        table.focus()

    def _program_rows(self, table: DataTable) -> None:
        """A running program's verdicts (busmon attach, a busmon run recording): what each found,
        how long it waited and judged, the loop's stalls; no load, so no rates."""
        table.border_title = "verdicts (Δ tasks: when asked → settled · enter: show · esc: back)"
        for label in ("verdict of", "verdict", "Δ tasks", "left/exit", "settle ms", "verdict ms", "stalls"):
            table.add_column(label)
        for r in self.results:
            left = len(findings.leaks(r))
            asked = naive_count(r)
            base = r.phase("baseline")
            at = asked.tasks - base.tasks if asked is not None and base is not None else None
            table.add_row(
                r.name, Text(r.verdict, style=VERDICT_STYLE.get(r.verdict, "")),
                f"{signed(at)}→{signed(r.task_delta('settle'))}",
                Text(f"{left}/{r.count('exited')}", style="bold red" if left else "green"),
                f"{r.settle_ms:,.0f}", f"{r.verdict_ms:,.1f}", str(len(r.stalls)))
        table.move_cursor(row=len(self.results) - 1)
        table.focus()

    def action_pick(self) -> None:
        self.dismiss(self.query_one(DataTable).cursor_row)

    @on(DataTable.RowSelected)
    def _picked(self, event: DataTable.RowSelected) -> None:
        self.dismiss(event.cursor_row)


class BusmonApp(App[int]):
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses elsewhere still find it
    TITLE = "busmon"
    AUTO_FOCUS = "#leftovers"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    # the footer shows these in this order and cuts what does not fit: at 80 columns, n, ? and q
    # must be there (the command palette, ctrl+p, is left out of the footer, not disabled)
    BINDINGS = [
        Binding("n", "next_phase", "Next"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit_busmon", "Quit"),
        # Textual's own ctrl+q would exit 0 whatever the verdict: it quits as q does
        Binding("ctrl+q", "quit_busmon", "Quit", show=False, priority=True),
        Binding("r", "runs", "Runs"),
        Binding("space", "toggle_pause", "Pause"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("e", "screenshot", "Screenshot"),
        # attached to a running program only (check_action): the agent's requests
        Binding("b", "baseline", "Baseline"),
        Binding("v", "verdict", "Verdict"),
        Binding("m", "mark", "Mark"),
        Binding("plus", "faster", "Faster", key_display="+"),
        Binding("minus", "slower", "Slower", key_display="-"),
        # a replay only (check_action); before the focused table's own end (its last row)
        Binding("end", "to_end", "End", priority=True),
    ]

    def __init__(self, controller: Controller | None = None, *, screenshots: Path | None = None,
                 exit_when_done: bool = False, keep_screenshots: bool = False) -> None:
        super().__init__()
        self.controller = controller
        #: a recording played back (tui/replay_controller.py): + and - set its speed, n jumps
        self.replaying = bool(getattr(controller, "replaying", False))
        #: a running program watched through its agent (tui/attach.py): b, v and m ask it
        self.attached = bool(getattr(controller, "attached", False))
        #: a running program's phases and figures (attached, or a busmon run recording replayed)
        self.program = controller is not None and getattr(controller.scenario, "backend", "") == "program"
        if controller is not None:  # the screen's own objects are busmon's, never the bus's memory
            controller.session.instruments.roots.append(self)
            controller.session.instruments.park_front_end = self.parked
        self.screenshots_dir = screenshots
        self.keep_screenshots = keep_screenshots or screenshots is not None
        self.exit_when_done = exit_when_done
        self.shots: list[tuple[str, str]] = []       # (file name, SVG) in phase order
        self.results: list[RunResult] = []
        self.paused = False
        self.interval_ms = controller.scenario.probes.interval_ms if controller else 100
        #: the header's model (tui/state.py), advanced by ``_advance`` from events and actions
        self.state = DashState(interval_ms=self.interval_ms)
        if controller is not None:
            sc = controller.scenario
            self.state = replace(self.state, backend=sc.backend, target=redact_url(sc.url),
                                 runs_total=0 if controller.interactive else len(sc.runs),
                                 interactive=controller.interactive, hold=any(r.hold_s > 0 for r in sc.runs),
                                 recording=Path(getattr(controller, "recording_to", "") or "").name)
        self._backlog: deque[object] = deque()
        self._holding = False
        self._run_index = 0
        self._phase_index = 0
        self._pending_sample: Sample | None = None
        self._queued_next = False                    # n pressed while a phase ran: act when it ends
        self._quitting = False                       # q pressed: no new screen opens meanwhile
        self.done: PlaybackDone | None = None
        self._told_cut = False                       # a replay said its recording was cut short

    # -- layout ----------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield PhaseBar()
        with Horizontal(id="top"):
            with Vertical(id="left"):
                yield PhaseTable(id="phases")
                yield ComponentsTable(id="components")
            with Vertical(id="right"):
                with Vertical(id="charts"):
                    yield PhaseChart("tasks", id="chart-tasks")
                    yield PhaseChart("threads", id="chart-threads")
                    yield PhaseChart("publish/s", id="chart-pub")
                    yield PhaseChart("deliver/s", id="chart-del")
                    yield Static(legend(), id="legend")
                yield ThroughputPanel()
        yield VerdictBanner("starting…")
        with Horizontal(id="bottom"):
            yield LeftoversTable(id="leftovers")
            yield StackView()
        yield Input(placeholder="filter leftovers and components (enter to apply, esc to clear)", id="filter",
                    disabled=True)
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one(PhaseTable).border_title = "tasks & threads by phase"
        self.query_one(ComponentsTable).border_title = "tasks by component"
        self.query_one("#charts").border_title = "live"
        self.query_one(ThroughputPanel).border_title = LIVE_TITLE
        self.query_one(LeftoversTable).border_title = "leftovers at the verdict" if self.program else "leftovers after close"
        self.query_one(StackView).border_title = "stack"
        self.query_one(StackView).show(None)
        if self.program:
            self.query_one("#chart-pub", PhaseChart).label = "rss MB"
            self.query_one("#chart-del", PhaseChart).label = "lag p99 ms"
            self.query_one("#legend", Static).update(legend(program=True))
            self.query_one(ThroughputPanel).for_program()
            if self.attached:  # the baseline is the program's start: everything it runs now is "new"
                self._advance(Noted("b once it has started up, then v judges what appeared since"))
        if self.controller is not None:
            # start measuring once the first frame is up: the app's start-up is not the bus's cost
            self.call_after_refresh(self._start)

    def _start(self) -> None:
        assert self.controller is not None
        self.controller.start()
        self.set_interval(DRAIN_EVERY_S, self.drain)
        self.set_interval(RENDER_EVERY_S, self._render_latest)

    # -- events from the arena --------------------------------------------------

    def drain(self) -> None:
        if self.controller is not None:
            self._backlog.extend(self.controller.drain())
        # paused: everything waits in the backlog, so no panel moves while another stands still
        # paused: everything waits in the backlog (a replay's pause stops its clock instead)
        while self._backlog and not self._holding and not (self.paused and not self.replaying) and self._drawable():
            self.apply(self._backlog.popleft())
        if self.replaying and self._drawable():
            self._show_replay_clock()
        if self.attached and self._drawable():
            text = self.controller.status_text()  # type: ignore[union-attr]
            if text != self.state.attached:
                self._advance(AttachedTo(text))

    def _show_replay_clock(self, note: str = "") -> None:
        controller = self.controller
        text = controller.position_text()  # type: ignore[union-attr]
        if text != self.state.replay or note:
            self._advance(ReplayAt(text, note))
        for problem in controller.new_problems():  # type: ignore[union-attr]
            self.notify(problem, severity="warning", timeout=8, markup=False)
        if self.done is not None and controller.recording.cut_short and not self._told_cut:  # type: ignore[union-attr]
            self._told_cut = True
            self.notify(CUT_SHORT, severity="warning", timeout=12, markup=False)
            self.query_one(VerdictBanner).waiting(CUT_SHORT)

    def _drawable(self) -> bool:
        """The main screen's widgets are there: not while the app is shutting down (a timer can
        still fire while the screens are taken apart)."""
        return not self._exit and bool(self.screen_stack) and bool(self.screen_stack[0].query(PhaseBar))

    def _advance(self, event: object) -> None:
        """The header and banner follow the model: one pure step, then a redraw of what changed."""
        before = self.state
        self.state = reduce(self.state, event)
        if not isinstance(event, Sample):  # samples redraw it with the numbers, throttled (_render_latest)
            self.query_one(PhaseBar).state = self.state
        if self.state.note and self.state.note != before.note:  # a passing word passes
            note = self.state.note
            self.set_timer(NOTE_S, lambda: self._advance(Noted("")) if self.state.note == note else None)
        if self.state.banner != before.banner and not self.state.viewing:
            self.query_one(VerdictBanner).show_state(self.state.banner, self.state.final, CAPTURE.summary())

    def apply(self, event: ArenaEvent | PlaybackDone) -> None:
        """Show one event (the tests feed recorded events straight in here)."""
        self._advance(RunDone(event.result) if isinstance(event, RunFinished) else event)
        if isinstance(event, Sample):
            self._on_sample(event)
        elif isinstance(event, PhaseStarted):
            self._on_phase_started(event)
        elif isinstance(event, PhaseSnapshot):
            self._on_snapshot(event)
        elif isinstance(event, AwaitingStep):
            self._on_awaiting(event)
        elif isinstance(event, RunFinished):
            self._on_run_finished(event.result)
        elif isinstance(event, PlaybackDone):
            self._on_done(event)

    def _on_awaiting(self, e: AwaitingStep) -> None:
        if self._queued_next and self.controller is not None:
            self._queued_next = False
            if self.controller.next_phase():
                self._advance(NextPressed(True))
                return
        if e.phase == "baseline" and self.results:
            self.notify(f"press n to start {e.run}: a fresh bus and its own baseline", timeout=5)

    def _on_phase_started(self, e: PhaseStarted) -> None:
        if e.phase == "baseline":
            self._run_index += 1
            self._phase_index = 0
            for chart in self.query(PhaseChart):
                chart.clear_points()
            self._render_panels()  # the new run's empty tables
            self.query_one(LeftoversTable).show(self.state.leftovers)
            self.query_one(StackView).show(None)

    def _render_panels(self) -> None:
        """The phase table, components and throughput, rendered from the model (tui/state.py);
        a finished run shown again (r) stays on screen until esc or the next run."""
        st = self.state
        if st.viewing:
            return
        self.query_one(PhaseTable).show_snapshots(st.snapshots)
        self.query_one(ComponentsTable).show(dict(st.components), dict(st.peaks))
        panel = self.query_one(ThroughputPanel)
        if st.final is not None:
            panel.finished(st.final)
        elif st.latest is not None:
            panel.show(st.latest)

    def _on_snapshot(self, snap: PhaseSnapshot) -> None:
        self._render_panels()
        self._phase_index += 1
        self._screenshot_at_boundary(snap.phase)

    def _on_sample(self, s: Sample) -> None:
        if self.state.finished and s.run == self.state.run and not self.attached:
            return  # the sampler goes on between runs: the verdict screen keeps the run's own figures
        self._push_points(s)
        self._pending_sample = s
        if self.controller is None:  # recorded events (tests): draw at once, no timer
            self._render_latest()

    def _push_points(self, s: Sample) -> None:
        self.query_one("#chart-tasks", PhaseChart).push(s.tasks, s.phase)
        self.query_one("#chart-threads", PhaseChart).push(s.os_threads, s.phase)
        if self.program:  # no load of busmon's: the program's memory and its loop's lag
            self.query_one("#chart-pub", PhaseChart).push(s.rss_mb, s.phase)
            self.query_one("#chart-del", PhaseChart).push((s.loop_lag_ms or {}).get("p99_ms", 0.0), s.phase)
            return
        self.query_one("#chart-pub", PhaseChart).push(s.publish_per_s, s.phase)
        self.query_one("#chart-del", PhaseChart).push(s.deliver_per_s, s.phase)

    def _render_latest(self) -> None:
        """Redraw the numbers and charts for the newest sample, if one came since the last redraw.

        Throttled: each redraw costs the UI thread time, and it shares the GIL with the bus.
        """
        s, self._pending_sample = self._pending_sample, None
        if s is None or (self.paused and not self.replaying):
            return
        for chart in self.query(PhaseChart):
            chart.refresh()
        self.query_one(PhaseBar).state = self.state  # the run's elapsed time
        self._render_panels()

    def _on_run_finished(self, r: RunResult) -> None:
        self.results.append(r)
        # the live panels end where the run ended: its settled counts, not a sample from load
        self._pending_sample = None
        settled = r.phase("settle")
        if settled is not None:
            others = (("#chart-pub", settled.rss_mb),) if self.program else (("#chart-pub", 0), ("#chart-del", 0))
            for chart_id, value in (("#chart-tasks", settled.tasks), ("#chart-threads", settled.os_threads), *others):
                chart = self.query_one(chart_id, PhaseChart)
                chart.push(value, "settle")
                chart.refresh()
        self._render_panels()
        self._show_leftovers(self.state.leftovers)
        self._phase_index += 1
        self._screenshot_at_boundary("verdict")

    def _show_leftovers(self, rows) -> None:
        """A run's leftovers, and the selected one's stack beside them (or that none is left)."""
        self.query_one(LeftoversTable).show(rows)
        self._show_selected_stack(judged=True)

    def _show_selected_stack(self, judged: bool | None = None) -> None:
        """The stack pane follows the table as it is now: the selected row's stack, or why there
        is none to show (nothing was left, once the run shown is ``judged``; the filter hides
        every leftover)."""
        leftovers, stack = self.query_one(LeftoversTable), self.query_one(StackView)
        if judged is None:
            judged = self.state.final is not None or bool(self.state.viewing)
        if leftovers.visible():
            stack.show(leftovers.selected())
        elif leftovers.items:
            stack.all_filtered(len(leftovers.items), leftovers.filter)
        elif judged:
            stack.nothing_left(program=self.program)
        else:
            stack.show(None)

    def _on_done(self, done: PlaybackDone) -> None:
        self.done = done
        if self.attached:
            if self.exit_when_done:
                self.call_after_refresh(self._exit_done)
            elif not self._quitting:
                self._advance(Noted("q quits"))
            return
        if self.exit_when_done:
            self.call_after_refresh(self._exit_done)
        elif done.result is not None and not self._quitting:  # q's own interruption ends it too
            self._advance(Noted("playback finished: r compares the runs, q quits"))
            if len(self.results) > 1:  # the final screen compares the runs, as the headless summary does
                self.action_runs()

    def _exit_done(self) -> None:
        if self._holding or self._backlog:
            self.call_after_refresh(self._exit_done)
            return
        self.action_quit_busmon()

    # -- screenshots ------------------------------------------------------------

    def _screenshot_at_boundary(self, phase: str) -> None:
        if not self.keep_screenshots:
            return
        run = self.results[-1].name if phase == "verdict" and self.results else self.state.run
        name = f"{self._run_index:02d}-{run}-{self._phase_index}-{phase}.svg"
        self._holding = True  # later events wait until the picture shows this boundary
        self.call_after_refresh(self._shoot, name)

    def _shoot(self, name: str) -> None:
        svg = self.export_screenshot()
        self.shots.append((name, svg))
        if self.screenshots_dir is not None:
            (self.screenshots_dir / name).write_text(svg, encoding="utf-8")
        self._holding = False
        self.call_later(self.drain)

    # -- actions ----------------------------------------------------------------

    def action_next_phase(self) -> None:
        if self.replaying:  # to the next phase's start, paused there (space plays on)
            if self.controller.next_phase():  # type: ignore[union-attr]
                self.paused = True
                self._advance(Paused(True))
                self.drain()
            else:
                self._show_replay_clock("no further phase in the recording")
            return
        if self.controller is None or not self.controller.interactive:
            self.notify("scripted playback: phases follow the scenario", timeout=3)
            return
        accepted = self.controller.next_phase()
        # pressed while a phase runs: kept, and acted on as soon as the phase ends (as the header says)
        self._queued_next = not accepted and bool(self.state.phase) and not self.state.failed
        self._advance(NextPressed(accepted))

    def action_toggle_pause(self) -> None:
        """Pause the whole display (the probes keep recording: events wait in the backlog)."""
        self.paused = not self.paused
        if self.replaying:  # the playback clock stops with the display
            self.controller.set_paused(self.paused)  # type: ignore[union-attr]
        if self.paused:
            self._advance(Paused(True))
            return
        waiting = -1 if self.replaying else sum(isinstance(e, Sample) for e in self._backlog)
        self.drain()
        self._advance(Paused(False, waiting))  # after what waited was drawn, so the word stays

    def _set_interval(self, step: int) -> None:
        i = min(range(len(INTERVALS_MS)), key=lambda k: abs(INTERVALS_MS[k] - self.interval_ms))
        wanted = i + step
        i = max(0, min(len(INTERVALS_MS) - 1, wanted))
        self.interval_ms = INTERVALS_MS[i]
        if self.controller is not None:
            self.controller.set_interval(self.interval_ms)
        limit = "" if i == wanted else ("fastest" if step < 0 else "slowest")
        self._advance(IntervalSet(self.interval_ms, limit))


    def action_faster(self) -> None:
        if self.replaying:
            self._replay_speed(+1)
        else:
            self._set_interval(-1)

    def action_slower(self) -> None:
        if self.replaying:
            self._replay_speed(-1)
        else:
            self._set_interval(+1)

    def _replay_speed(self, step: int) -> None:
        limit = self.controller.step_speed(step)  # type: ignore[union-attr]
        self._show_replay_clock(f"replay speed: the {limit}" if limit else "")

    def action_to_end(self) -> None:
        """A replay: everything that is left, at once."""
        if self.replaying:
            self.controller.to_end()  # type: ignore[union-attr]
            self.drain()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.disabled = False
        box.add_class("-shown")
        box.focus()

    @on(Input.Submitted, "#filter")
    def _apply_filter(self, event: Input.Submitted) -> None:
        # the header says when the filter hides every leftover, for as long as it does (the model)
        self._advance(Filtered(event.value))
        self.query_one(LeftoversTable).set_filter(event.value)
        self.query_one(ComponentsTable).set_filter(event.value)
        self._show_selected_stack()
        event.input.remove_class("-shown")
        event.input.disabled = True
        self.query_one(LeftoversTable).focus()

    def on_key(self, event) -> None:
        if event.key == "escape" and self.state.viewing and self.results:  # back to the live run
            self._show_run(len(self.results) - 1)
            event.stop()
            return
        box = self.query_one("#filter", Input)
        if event.key == "escape" and (box.has_class("-shown") or self.state.filter):
            box.value = ""
            self._advance(Filtered(""))
            self.query_one(LeftoversTable).set_filter("")
            self.query_one(ComponentsTable).set_filter("")
            self._show_selected_stack()
            box.remove_class("-shown")
            box.disabled = True
            self.query_one(LeftoversTable).focus()
            event.stop()

    @on(DataTable.RowHighlighted, "#leftovers")
    def _show_stack(self, event: DataTable.RowHighlighted) -> None:
        self.query_one(StackView).show(self.query_one(LeftoversTable).selected())

    @on(DataTable.RowSelected, "#leftovers")
    def _open_stack(self, event: DataTable.RowSelected) -> None:
        leftover = self.query_one(LeftoversTable).selected()
        if leftover is not None:
            self.push_screen(StackScreen(leftover))

    @contextlib.contextmanager
    def parked(self) -> Iterator[None]:
        """Hold the dashboard's thread still (called from the arena): a callback on the app's
        loop waits until the block ends, so no frame or screenshot is half drawn meanwhile.
        Bounded both ways: if the app does not get to it within ``PARK_WAIT_S`` (busy, or
        gone), the block runs anyway; the app never waits longer than ``PARK_MAX_S``."""
        parked, release = threading.Event(), threading.Event()

        def park() -> None:
            parked.set()
            release.wait(PARK_MAX_S)

        loop = self._loop  # Textual's own loop and thread (App.call_from_thread uses them too)
        if loop is not None and loop.is_running() and threading.get_ident() != self._thread_id:
            loop.call_soon_threadsafe(park)
            parked.wait(PARK_WAIT_S)
        try:
            yield
        finally:
            release.set()

    def export_screenshot(self, *, title: str | None = None, simplify: bool = False) -> str:
        """Textual's SVG, scrubbed of secrets: every screenshot (phase boundaries, the
        ``e`` key, the HTML report's pictures) is made here."""
        return scrub(super().export_screenshot(title=title, simplify=simplify))

    def action_screenshot(self) -> None:
        """An SVG of the screen now, in ``--screenshots``' folder or ``busmon-screenshots/``
        (made when first needed: never loose files in the folder busmon was started from, a
        checkout as often as not). The toast names the folder and the file on lines of their
        own, so neither is split mid-word."""
        folder = self.screenshots_dir or Path.cwd() / SCREENSHOT_FOLDER
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = Path(self.save_screenshot(filename=_shot_name(folder), path=str(folder)))
        except OSError as exc:
            self.notify(f"no screenshot: {folder}: {exc.strerror or exc}", severity="error", timeout=6)
            return
        self.notify(f"screenshot saved in\n{_display_folder(path.parent)}/\n{path.name}", timeout=6, markup=False)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """n is not offered in a scripted playback (the footer leaves it out)."""
        if action == "next_phase" and self.controller is not None and not self.controller.interactive:
            return self.replaying  # a replay's n jumps to the next phase
        if action == "to_end":
            return self.replaying
        if action in ("baseline", "verdict", "mark"):
            return self.attached
        if action in ("faster", "slower") and self.attached:
            return False  # the agent samples at its own rate
        return True

    # -- attached to a running program ------------------------------------------------------------

    def _ask(self, sent: bool, said: str) -> None:
        gone = "the program has exited: nothing to ask"
        self._advance(Noted(said if sent and not self.controller.program_ended else gone))  # type: ignore[union-attr]

    def action_baseline(self) -> None:
        if self.attached:
            self._ask(self.controller.baseline(), "baseline asked for: a GC in the program, then its census")  # type: ignore[union-attr]

    def action_verdict(self) -> None:
        if self.attached:
            self._ask(self.controller.verdict(), "verdict asked for: settling what appeared since the baseline")  # type: ignore[union-attr]

    def action_mark(self) -> None:
        if self.attached:
            name = self.controller.mark()  # type: ignore[union-attr]
            self._ask(bool(name), f"marked: {name}")

    def action_runs(self) -> None:
        if not self.results:
            self._advance(Noted("no run has finished yet: r lists runs once they have their verdict"))
            return
        name = self.controller.scenario.name if self.controller is not None else "this session"
        self.push_screen(RunsScreen(list(self.results), name), self._show_run)

    def _show_run(self, index: int | None) -> None:
        """Show a finished run on the main screen (its phases, figures, leftovers, verdict); the
        next run's baseline brings the live view back."""
        if index is None or not 0 <= index < len(self.results):
            return
        r = self.results[index]
        table = self.query_one(PhaseTable)
        table.reset()
        for snap in r.phases:
            table.add_snapshot(snap)
        settled = r.phase("settle")
        if settled is not None:
            components = self.query_one(ComponentsTable)
            components.reset_peaks()  # the peaks of the run shown, not of every run so far
            for snap in r.phases:
                components.show({k: v for k, v in snap.by_component.items() if not k.startswith("thread:")})
            components.show({k: v for k, v in settled.by_component.items() if not k.startswith("thread:")})
        self.query_one(ThroughputPanel).finished(r)
        self._show_leftovers(findings.rows(r))
        self.query_one(VerdictBanner).show(r, CAPTURE.summary())
        live = index == len(self.results) - 1
        self._advance(Viewing("" if live else r.name, index + 1, len(self.results), tuple(findings.rows(r))))

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_quit_busmon(self) -> None:
        if self.controller is None or self.controller.stopped:
            code = self._exit_code()
            self.exit(code, return_code=code)
            return
        self._quitting = True
        self.query_one(VerdictBanner).waiting("quitting: closing the bus and settling (within their deadlines)…")
        self.run_worker(self._close_and_exit(), exclusive=True, group="quit")

    async def _close_and_exit(self) -> None:
        """Interrupt the playback and wait for it on this loop: no thread of the UI's own may
        start while the bus is being judged (it would count as the run's leftover)."""
        assert self.controller is not None
        await self.controller.stop_playback()
        self.controller.shutdown()  # quick now: the run is closed and settled
        code = self._exit_code()
        self.exit(code, return_code=code)

    def _exit_code(self) -> int:
        """The verdict of every run played, as an exit code (:attr:`ScenarioResult.exit_code_when_quit`)."""
        runs = tuple(self.controller.session.results) if self.controller is not None else tuple(self.results)
        return ScenarioResult("", runs).exit_code_when_quit

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Next phase", "Start the next phase (or a new run after settle)", self.action_next_phase)
        yield SystemCommand("Pause / resume display", "The probes keep recording", self.action_toggle_pause)
        yield SystemCommand("Sample faster", "Shorter sampling interval", self.action_faster)
        yield SystemCommand("Sample slower", "Longer sampling interval", self.action_slower)
        yield SystemCommand("Filter tables", "Filter leftovers and components", self.action_filter)
        yield SystemCommand("Export screenshot", "Save an SVG of the screen now", self.action_screenshot)
        yield SystemCommand("Help", "What the panels and keys mean", self.action_help)
        yield SystemCommand("Quit busmon", "Close the bus if open, then quit", self.action_quit_busmon)
