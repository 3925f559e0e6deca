"""What ``busmon run`` says on stderr while the program runs and when it has ended: a line per
baseline and mark, the naive count at shutdown, and the verdict in the words ``watch()`` and
the pytest plugin use (each leftover with its stack and where it was created)."""

from __future__ import annotations

from typing import Any, Callable

from busmon.probes.agent.loop_verdict import BASELINE, SETTLE, SHUTDOWN
from busmon.probes.model import PhaseSnapshot, PhaseStarted, RunFinished, RunResult, signed
from busmon.probes.observe.loopwatch import Stall
from busmon.probes.verdict.watch_result import WatchResult


def _counts(s: PhaseSnapshot, since_baseline: bool) -> str:
    text = f"{s.tasks} task{'s' if s.tasks != 1 else ''}, {s.threads} thread{'s' if s.threads != 1 else ''}"
    if since_baseline and (s.new_tasks or s.new_threads or s.sockets):
        text += (f" ({signed(s.new_tasks)} tasks, {signed(s.new_threads)} threads, {signed(s.sockets)} sockets "
                 "new since the baseline)")
    return text


class RunTeller:
    """Turns the agent's events into lines for a person (``say``); one per run that matters."""

    def __init__(self, say: Callable[[str], None], settle_timeout_s: float, stall_ms: int) -> None:
        self.say = say
        self.settle_timeout_s = settle_timeout_s
        self.stall_ms = stall_ms
        self._first_run = ""
        self._run = ""
        self._started: dict[str, float] = {}   # when each phase began (a mark: the same instant)
        #: the verdicts' texts, told once the program has exited: after its own last words
        #: (a traceback), not in the middle of them
        self.verdicts: list[str] = []

    def event(self, event: Any) -> None:
        if isinstance(event, PhaseStarted):
            self._first_run = self._first_run or event.run
            self._run = event.run
            self._started[event.phase] = event.t_s
        elif isinstance(event, PhaseSnapshot):
            self.snapshot(event)
        elif isinstance(event, RunFinished):
            text = as_watch_result(event.result, self.settle_timeout_s, self.stall_ms).report()
            self.verdicts.append(text + retained_lines(event.result))

    def tell_verdicts(self) -> None:
        for text in self.verdicts:
            self.say("")
            self.say(text)
        self.verdicts = []

    def snapshot(self, s: PhaseSnapshot) -> None:
        """A line per baseline, mark and shutdown; a loop other than the first is named."""
        at = f"{s.t_s:,.2f} s"
        if self._run != self._first_run:
            at += f" in {self._run.rsplit('(', 1)[-1].rstrip(')')}"
        if s.phase == BASELINE:
            self.say(f"busmon: baseline at {at}: {_counts(s, False)}")
        elif s.phase == SHUTDOWN:
            if s.new_tasks or s.new_threads or s.sockets or s.processes:
                self.say(f"busmon: shutdown at {at}: a plain count now sees {signed(s.new_tasks)} tasks and "
                         f"{signed(s.new_threads)} threads; waiting up to {self.settle_timeout_s:g} s for what is "
                         "left to exit")
            else:
                self.say(f"busmon: shutdown at {at}: nothing new is alive; judging")
        elif s.phase != SETTLE:
            began = self._started.pop(s.phase, None)  # told once: the names do not pile up
            if began is not None and s.t_s - began > 0.001:  # opened earlier: a phase that ended
                self.say(f"busmon: phase {s.phase!r} ended at {at} ({s.t_s - began:,.2f} s): {_counts(s, True)}")
            else:
                self.say(f"busmon: mark {s.phase!r} at {at}: {_counts(s, True)}")


def retained_lines(run: RunResult, most: int = 5) -> str:
    """``--retained``: the largest kinds of object the program made since the baseline and still
    holds (not a verdict: a cache, a pool, a connection's buffers are held on purpose)."""
    kept = run.memory.get("retained_since_baseline")
    if kept is None:
        return ""
    if not kept:
        return "\n\nheld since the baseline: nothing the program made is still alive"
    lines = ["", "", f"held since the baseline (the largest {min(most, len(kept))} of {len(kept)} kinds; the report "
                     "has them all):"]
    lines += [f"  {x['count']:>8,} {x['type']}  {x['size_bytes'] / 1024:,.1f} KiB" for x in kept[:most]]
    return "\n".join(lines)


def naive_count(run: RunResult) -> PhaseSnapshot | None:
    """The counts taken when the verdict was asked for (at shutdown, at a mark, on v): what a
    plain count then would have said, before busmon waited for anything to exit."""
    return next((p for p in reversed(run.phases) if p.phase != SETTLE), None)


def as_watch_result(run: RunResult, settle_timeout_s: float, stall_ms: int) -> WatchResult:
    """A program's run, read as a watch's verdict: the same report text for the same findings."""
    end = naive_count(run)
    at_end = {"tasks": end.new_tasks, "threads": end.new_threads} if end is not None else {}
    stalls = tuple(Stall(**dict(s)) for s in run.stalls)
    if any("judged then" in n for n in run.notes):  # the wait was cut short: say how long it was
        settle_timeout_s = round(run.settle_ms / 1000, 3)
    return WatchResult(run.verdict, run.leftovers, settle_timeout_s, run.settle_ms, run.verdict_ms, at_end,
                       run.name, run.notes, run.verdict == "clean", stalls, stall_ms or None)
