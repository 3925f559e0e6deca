"""What the dashboard's header and status line show, as a plain model and a pure function.

``reduce(state, event)`` takes the arena's events (``PhaseStarted``, ``Sample``, ``AwaitingStep``,
``FailureNoted``, ``RunFinished``) and the person's own actions (pause, filter, sampling speed, a
key pressed too early) and returns the next state; the widgets only render it. So where you are,
what is connected, and what ``n`` will do are tested without Textual (tests/test_dashboard_state.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from busmon.probes.verdict import findings
from busmon.probes.harness.gate import AwaitingStep
from busmon.probes.model import FailureNoted, Leftover, PhaseSnapshot, PhaseStarted, RunResult, Sample
from busmon.tui.words import count


#: the banner's word while a phase is under way
PHASE_WORDS = {
    "baseline": "run {run}: baseline: a GC, then every live task and thread, by identity",
    "create": "run {run}: creating the bus (start: connect, start the worker pool)",
    "subscribe": "run {run}: subscribing (live before the load starts)",
    "load": "run {run}: load: publishing and waiting for every delivery",
    "hold": "run {run}: holding, idle, before close",
    "close": "run {run}: closing the bus",
    "settle": "settling: waiting for everything the bus started to exit…",
}
FIRST_BASELINE = "press n to take the baseline: a GC, then every live task and thread, by identity"


@dataclass(frozen=True, slots=True)
class Paused:
    paused: bool
    recorded: int = 0           # on resume: samples that arrived meanwhile (kept, now drawn)


@dataclass(frozen=True, slots=True)
class Filtered:
    text: str


@dataclass(frozen=True, slots=True)
class IntervalSet:
    ms: int
    at_limit: str = ""          # "fastest" | "slowest" when + / - could go no further


@dataclass(frozen=True, slots=True)
class NextPressed:
    """``n`` pressed; ``accepted`` when a phase was waiting for it."""

    accepted: bool


@dataclass(frozen=True, slots=True)
class Noted:
    """A passing word for the status line ("" clears it)."""

    text: str


@dataclass(frozen=True, slots=True)
class Viewing:
    """A finished run shown again (``run`` ""): back to the live one)."""

    run: str = ""
    index: int = 0
    total: int = 0
    leftovers: tuple[Any, ...] = ()   # the run shown's findings (what the filter then applies to)


@dataclass(frozen=True, slots=True)
class ReplayAt:
    """A replay's clock moved (``REPLAY 0:12 / 3:45 ×4``), with a passing word if any."""

    text: str
    note: str = ""


@dataclass(frozen=True, slots=True)
class AttachedTo:
    """Attached to a running program: which, and how it is (``ATTACHED pid 4242``)."""

    text: str


@dataclass(frozen=True, slots=True)
class RunDone:
    """A run's result reached the screen (RunFinished, unwrapped)."""

    result: RunResult


@dataclass(frozen=True)
class DashState:
    backend: str = ""
    target: str = ""                  # the URL, password masked; or the import path
    runs_total: int = 0               # the scenario's runs; 0 in the open-ended interactive session
    run: str = ""
    run_index: int = 0                # 1-based, counted as runs start
    phase: str = ""                   # the phase under way ("" between runs)
    waiting_for: str = ""             # the phase a key press will start
    done: frozenset[str] = frozenset()
    elapsed_s: float = 0.0            # since the current (or last finished) run's baseline began
    run_t0: float = 0.0               # the run's clock at its baseline (the run's clock starts earlier)
    finished: bool = False            # the current run has its verdict
    failed: tuple[str, str] | None = None   # (phase, one-line reason) of the current run
    paused: bool = False
    filter: str = ""
    interval_ms: int = 100
    note: str = ""                    # a passing word: why n did nothing, a speed limit reached
    viewing: str = ""                 # a finished run shown again instead of the live one ("1/2 warm-up")
    interactive: bool = True          # n steps the phases (False: a scripted playback)
    hold: bool = True                 # the runs have a hold phase (else the header leaves it out)
    replay: str = ""                  # a replay's position, length and speed ("": a live session)
    recording: str = ""               # --record's file while the session is recorded
    attached: str = ""                # busmon attach: the program's pid and state ("": not attached)
    # the panels' data: the current run's phase snapshots, its newest reading, its result once it
    # has one, and the live tasks by component with their peaks (threads are not components)
    snapshots: tuple[PhaseSnapshot, ...] = ()
    latest: Sample | None = None
    final: RunResult | None = None
    components: tuple[tuple[str, int], ...] = ()
    peaks: tuple[tuple[str, int], ...] = ()
    #: the banner: ("waiting", text) | ("failing", phase, reason) | ("verdict",) (of ``final``)
    banner: tuple[str, ...] = ("waiting", "")
    leftovers: tuple[Any, ...] = ()   # the run's findings (busmon.probes.verdict.findings.rows), once it has its verdict
    verdicts: tuple[tuple[str, str], ...] = field(default=())   # (run, verdict) of finished runs
    viewed: tuple[Any, ...] = ()      # the findings of the finished run shown again (``viewing``)

    @property
    def lit(self) -> str:
        """The phase to light: the one under way, or settle once the run has its verdict."""
        if self.phase:
            return self.phase
        return "settle" if self.finished else ""

    def run_label(self) -> str:
        """``run 2/4 main`` (or ``run 3 run-3`` in the open-ended session)."""
        if not self.run:
            return ""
        if not self.runs_total and self.run == f"run-{self.run_index}":
            return self.run  # the open-ended session names its runs by number already
        count = f"{self.run_index}/{self.runs_total}" if self.runs_total else f"{self.run_index}"
        return f"run {count} {self.run}"

    def hidden_by_filter(self) -> int:
        """How many leftovers the filter hides when it hides every one of them (else 0): an
        empty table must not read as "nothing left". Follows the filter and the run shown, so
        it is never said after esc or once another run's leftovers are on screen."""
        rows = self.viewed if self.viewing else self.leftovers
        if not self.filter or any(matches(x, self.filter) for x in rows):
            return 0
        return len(rows)

    def filter_word(self) -> str:
        """The filter's lasting mark in the header."""
        if not self.filter:
            return ""
        if hidden := self.hidden_by_filter():
            what = "the only leftover" if hidden == 1 else f"all {count(hidden, 'leftover')}"
            return f'filter "{self.filter}" hides {what} (esc clears it)'
        return f'filter "{self.filter}" (/ to change)'

    def next_key(self, short: bool = False) -> str:
        """What n does now: ``n → load``, or when it will act (``short``: in fewer words)."""
        if self.viewing:
            return "esc → the live run"
        if self.attached:
            return "b · v · m" if short else "b → baseline · v → verdict · m → mark"
        if self.replay and not self.replay.endswith(" END"):  # a replay played to its end: nothing to jump to
            return "n · end" if short else "n → next phase · end → the end"
        if self.replay:
            return ""
        if not self.interactive:
            return ""  # a scripted playback steps itself
        if self.waiting_for:
            if self.waiting_for == "baseline" and self.run_index and self.finished:
                return "n → next run"
            return f"n → {self.waiting_for}"
        if self.failed and not self.finished:
            return "n: after the verdict" if short else "n: after the verdict (busmon closes and settles on its own)"
        if self.phase and not self.finished:
            return f"n: after {self.phase}"
        return ""


def matches(x: Leftover, text: str) -> bool:
    """The leftovers filter: a part of the name or component, or the state (any case)."""
    f = text.lower()
    return not f or f in x.name.lower() or f in x.component.lower() or f in x.state


def _with_components(state: DashState, counts: Any) -> DashState:
    """Tasks by component now (``thread:`` entries left out), and each one's peak this run."""
    live = tuple((c, n) for c, n in counts.items() if not c.startswith("thread:"))
    peaks = dict(state.peaks)
    for c, n in live:
        peaks[c] = max(n, peaks.get(c, 0))
    return replace(state, components=live, peaks=tuple(peaks.items()))


def _phase_banner(event: PhaseStarted) -> tuple[str, ...]:
    return ("waiting", PHASE_WORDS.get(event.phase, f"{event.phase}…").format(run=event.run))


def reduce(state: DashState, event: Any) -> DashState:
    """The next state after ``event`` (an arena event or a person's action); pure."""
    if isinstance(event, Sample):
        if event.run != state.run or (state.finished and not state.attached):
            # the sampler goes on between runs: a finished run keeps its own figures (attached,
            # the program goes on after a verdict, and so do its live panels)
            return state
        state = _with_components(state, event.by_component)
        return replace(state, latest=event, elapsed_s=max(state.elapsed_s, event.t_s - state.run_t0))
    if isinstance(event, PhaseSnapshot):
        if event.phase == "baseline":
            state = replace(state, snapshots=(), peaks=())
        snaps = tuple(s for s in state.snapshots if s.phase != event.phase) + (event,)
        return replace(_with_components(state, event.by_component), snapshots=snaps)
    if isinstance(event, PhaseStarted):
        if event.phase == "baseline" or event.run != state.run:
            return replace(state, run=event.run, run_index=state.run_index + 1, phase=event.phase,
                           waiting_for="", done=frozenset(), elapsed_s=0.0, run_t0=event.t_s, finished=False,
                           failed=None, note="", viewing="", snapshots=(), latest=None, final=None,
                           components=(), peaks=(), banner=_phase_banner(event), leftovers=())
        done = state.done | {state.phase} if state.phase else state.done
        banner = state.banner if state.failed else _phase_banner(event)  # a failure stays said
        return replace(state, phase=event.phase, waiting_for="", done=done, banner=banner,
                       elapsed_s=max(state.elapsed_s, event.t_s - state.run_t0), note="")
    if isinstance(event, AwaitingStep):
        banner = state.banner
        if event.phase == "baseline" and not state.run_index:
            banner = ("waiting", FIRST_BASELINE)
        elif event.phase != "baseline" and not state.failed:
            banner = ("waiting", f"run {event.run}: {state.phase or 'the phase'} done · n starts {event.phase}")
        return replace(state, waiting_for=event.phase, note="", banner=banner)
    if isinstance(event, FailureNoted):
        return replace(state, failed=(event.phase, event.error),
                       banner=("failing", event.phase, event.error, getattr(event, "kind", "error")))
    if isinstance(event, RunDone):
        r = event.result
        settled = r.phase("settle")
        if settled is not None:  # the panels end where the run ended: its settled counts
            state = _with_components(state, settled.by_component)
        return replace(state, phase="", finished=True, done=frozenset(p.phase for p in r.phases) | {"settle"},
                       verdicts=(*state.verdicts, (r.name, r.verdict)), final=r, banner=("verdict",),
                       leftovers=tuple(findings.rows(r)))
    if isinstance(event, Viewing):
        label = f"{event.index}/{event.total} {event.run}" if event.run else ""
        return replace(state, viewing=label, viewed=tuple(event.leftovers) if event.run else (), note="")
    if isinstance(event, Noted):
        return replace(state, note=event.text)
    if isinstance(event, Paused):
        note = ("" if event.paused or event.recorded < 0  # -1: a replay, where nothing arrives while paused
                else f"resumed: {count(event.recorded, 'sample')} recorded while paused")
        return replace(state, paused=event.paused, note=note)
    if isinstance(event, Filtered):
        return replace(state, filter=event.text.strip())
    if isinstance(event, ReplayAt):
        return replace(state, replay=event.text, note=event.note or state.note)
    if isinstance(event, AttachedTo):
        return replace(state, attached=event.text)
    if isinstance(event, IntervalSet):
        note = f"sampling every {event.ms} ms: the {event.at_limit}" if event.at_limit else ""
        return replace(state, interval_ms=event.ms, note=note)
    if isinstance(event, NextPressed):
        if event.accepted:
            return replace(state, note="")
        if state.phase and not state.finished and not state.failed:
            return replace(state, note=f"n kept: the next phase starts when {state.phase} ends")
        return replace(state, note="nothing waits for n now")
    return state


