"""The verdict on one watched stretch of code (``watch()``, a test under the pytest plugin), and
how it reads: a record, so that the texts and reports that read it need nothing of the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from busmon.probes.model import Leftover
from busmon.probes.observe.loopwatch import Stall
from busmon.probes.verdict.leak_text import leak_report, leftover_counts
from busmon.probes.verdict.stall_text import failing, short_line, stall_report

#: states that make a verdict ``leaked`` (``destroyed``: a pending task or an open socket that
#: only the garbage collector ended; nothing closed it)
FAILING = ("leaked", "destroyed")


@dataclass(frozen=True)
class WatchResult:
    """The verdict on one watched stretch of code, and everything it was made from."""

    verdict: str                          # clean | leaked
    leftovers: tuple[Leftover, ...]       # every candidate, leaked first
    settle_timeout_s: float               # how long leftovers were waited for, at most
    settle_ms: float                      # the code's end → the last exit (or the deadline)
    verdict_ms: float                     # last exit → verdict ready (GC, classification)
    at_end: dict[str, int]                # what a plain count right at the end would have said
    #                                       (no "tasks" when tasks were not judged: no asyncio loop)
    label: str = ""                       # what was watched (a test's node id)
    notes: tuple[str, ...] = ()           # what could not be judged here, and why
    settled: bool = False                 # everything waited for exited before the deadline
    stalls: tuple[Stall, ...] = ()        # the loop ran nothing for stall_ms or more, oldest first
    stall_ms: int | None = None           # the watchdog's threshold (None: the loop was not watched)
    fail_on_stall_ms: float | None = None  # a stall this long fails (None: stalls only warn)

    @property
    def clean(self) -> bool:
        return self.verdict == "clean"

    @property
    def leaked(self) -> list[Leftover]:
        return [x for x in self.leftovers if x.state in FAILING]

    @property
    def lingered(self) -> list[Leftover]:
        """Alive when the code ended, exited while busmon waited: not a failure."""
        return [x for x in self.leftovers if x.state == "exited"]

    @property
    def ignored(self) -> list[Leftover]:
        return [x for x in self.leftovers if x.state == "ignored"]

    @property
    def failing_stalls(self) -> list[Stall]:
        """The stalls at least ``fail_on_stall_ms`` long: they fail (none when it is unset)."""
        return failing(self.stalls, self.fail_on_stall_ms)

    def stall_report(self, during: str = "", rule: str = "") -> str:
        """Each stall, longest first: how long, the call that held the loop, its stack ('' if
        none); ``during`` says what the watched code was (``during the test``); ``rule``, what
        the stalls make of the verdict when something other than ``fail_on_stall_ms`` decided."""
        return stall_report(self.stalls, self.stall_ms, self.fail_on_stall_ms, during, rule)

    def stall_line(self) -> str:
        """One line on the longest stall ('' if none): for a warning or a short summary."""
        return short_line(self.stalls) if self.stalls else ""

    def summary(self) -> str:
        """``3 tasks and 1 socket leaked`` / ``clean (2 tasks lingered 3.1 ms)``."""
        if self.leaked:
            text = f"{leftover_counts(self.leaked)} leaked"
        elif self.lingered:
            longest = max((x.exited_after_ms or 0.0) for x in self.lingered)
            text = f"clean ({leftover_counts(self.lingered)} lingered, the last {longest:,.1f} ms)"
        else:
            text = "clean"
        return f"{text}; {self.stall_line()}" if self.stalls else text

    def report(self, context: str = "", stalls: bool = True) -> str:
        """The goleak-style text: each leftover with kind, name, component, how long it was
        waited for, its stack now and, with ``trace_creation``, where it was created; then the
        stalls, if the loop had some (``stalls=False``: the leftovers only, for a caller that
        tells the stalls apart, as the pytest plugin does)."""
        text = leak_report(self, context)
        return "\n\n".join((text, self.stall_report())) if stalls and self.stalls else text

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "verdict": self.verdict, "settle_timeout_s": self.settle_timeout_s,
                "settle_ms": self.settle_ms, "verdict_ms": self.verdict_ms, "settled": self.settled,
                "at_end": dict(self.at_end),
                "leftovers": [x.as_dict() for x in self.leftovers], "notes": list(self.notes),
                "stalls": [x.as_dict() for x in self.stalls], "stall_ms": self.stall_ms,
                "fail_on_stall_ms": self.fail_on_stall_ms}
