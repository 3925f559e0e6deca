"""Immutable records that leave the arena: samples, phase snapshots, leftovers, results.

The arena thread builds them; the UI thread and the reports only read them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

PHASES = ("baseline", "create", "subscribe", "load", "hold", "close", "settle")


@dataclass(frozen=True, slots=True)
class Sample:
    """One probe reading (10 Hz by default)."""

    run: str
    phase: str
    t_s: float                       # since the run started
    tasks: int
    threads: int
    os_threads: int
    by_component: Mapping[str, int]
    published: int
    delivered: int
    expected: int                    # deliveries owed once load is under way
    publish_per_s: float
    deliver_per_s: float
    latency_ms: Mapping[str, float]
    rss_mb: float
    cpu_percent: float
    open_fds: int
    sockets: int = 0                 # sockets opened since the run's baseline, open now
    loop_lag_ms: Mapping[str, float] = field(default_factory=dict)  # this phase so far: p50/p99/max
    stalls: int = 0                  # stalls of this run so far
    errors: Mapping[str, int] = field(default_factory=dict)  # the bus's errors so far (handler, decode, publish), > 0 only


@dataclass(frozen=True, slots=True)
class PhaseSnapshot:
    """The full identity scan at a phase boundary."""

    phase: str
    t_s: float
    tasks: int
    threads: int
    os_threads: int
    by_component: Mapping[str, int]
    new_tasks: int = 0               # alive now and not in this run's baseline
    new_threads: int = 0
    sockets: int = 0                 # sockets open now that the run's baseline lacked (by identity)
    fds: int = 0                     # every open descriptor of the process
    processes: int = 0               # child processes alive now that the baseline lacked
    rss_mb: float = 0.0
    loop_lag_ms: Mapping[str, float] = field(default_factory=dict)  # over the phase just ended

    def as_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "t_s": round(self.t_s, 4), "tasks": self.tasks,
                "threads": self.threads, "os_threads": self.os_threads,
                "by_component": dict(self.by_component), "new_tasks": self.new_tasks,
                "new_threads": self.new_threads, "sockets": self.sockets, "fds": self.fds,
                "processes": self.processes, "rss_mb": self.rss_mb, "loop_lag_ms": dict(self.loop_lag_ms)}


@dataclass(frozen=True, slots=True)
class PhaseStarted:
    run: str
    phase: str
    t_s: float


@dataclass(frozen=True, slots=True)
class FailureNoted:
    """The run failed in ``phase`` (said at once; the bus is closed and settled next, without
    waiting for a key press)."""

    run: str
    phase: str
    error: str
    kind: str = "error"              # as RunResult.failure's: "interrupted" is Ctrl-C or q, not a failure


@dataclass(frozen=True, slots=True)
class Leftover:
    """Something alive right after close that the baseline did not have."""

    kind: str                        # task | thread | timer | socket | fd | process
    name: str
    component: str
    state: str                       # leaked | destroyed | unknown | exited | ignored
    exited_after_ms: float | None
    stack: tuple[str, ...] = ()
    created_at: str | None = None
    detail: str = ""                 # coroutine qualname, thread ident, why ignored

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stack"] = list(self.stack)
        return d


@dataclass(frozen=True, slots=True)
class RunResult:
    name: str
    backend: str
    verdict: str                     # clean | leaked | failed | interrupted (Ctrl-C or q)
    phases: tuple[PhaseSnapshot, ...]
    settle_ms: float                 # close returned → last leftover exited (or the deadline)
    leftovers: tuple[Leftover, ...]
    delivery: Mapping[str, int]
    throughput: Mapping[str, Any]
    error: str | None = None
    drift: Mapping[str, int] = field(default_factory=dict)
    peaks: Mapping[str, int] = field(default_factory=dict)
    counters: Mapping[str, int] = field(default_factory=dict)
    verdict_ms: float = 0.0          # last leftover exited → verdict ready (GC + final census)
    # why the run failed: phase, kind (deadline | error | fault | interrupted), message,
    # deadline_s, the stuck stack and its component, and the broker's state when it was looked at
    failure: Mapping[str, Any] | None = None
    paused_ms: float = 0.0           # a person's wait between settling and asking for the verdict
    stalls: tuple[Mapping[str, Any], ...] = ()   # the loop blocked ≥ stall_ms: phase, ms, blocking call
    # rss per phase and its drift; objects the run created still alive after settling, by type;
    # ``retained`` findings (what grows with the envelopes sent)
    memory: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()      # what could not be judged here, and why (e.g. no /proc)
    target: str = ""                 # where the bus pointed, password masked (kafka://bob:***@h:9093)
    options: Mapping[str, Any] = field(default_factory=dict)  # the bus's options, secret values masked

    def retained(self) -> list[Mapping[str, Any]]:
        return list(self.memory.get("retained", ()))

    def worst_stall(self) -> Mapping[str, Any] | None:
        """The longest stall of the run, if any."""
        return max(self.stalls, key=lambda s: s["duration_ms"], default=None)

    def phase(self, name: str) -> PhaseSnapshot | None:
        return next((p for p in self.phases if p.phase == name), None)

    def task_delta(self, phase: str) -> int | None:
        """Tasks at ``phase`` minus tasks at this run's baseline (None if either is missing)."""
        base, at = self.phase("baseline"), self.phase(phase)
        return at.tasks - base.tasks if base and at else None

    def count(self, state: str) -> int:
        """Leftovers in ``state``; "leaked" counts the destroyed-while-pending too (both are bugs)."""
        states = ("leaked", "destroyed") if state == "leaked" else (state,)
        return sum(1 for x in self.leftovers if x.state in states)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "backend": self.backend, "target": self.target,
            "options": dict(self.options), "verdict": self.verdict, "error": self.error,
            "phases": [p.as_dict() for p in self.phases],
            "settle_ms": round(self.settle_ms, 2),
            "verdict_ms": round(self.verdict_ms, 2),
            "paused_ms": round(self.paused_ms, 2),
            "leftovers": [x.as_dict() for x in self.leftovers],
            "delivery": dict(self.delivery),
            "throughput": dict(self.throughput),
            "drift": dict(self.drift),
            "peaks": dict(self.peaks),
            "counters": dict(self.counters),
            "failure": dict(self.failure) if self.failure else None,
            "stalls": [dict(x) for x in self.stalls],
            "memory": dict(self.memory),
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class RunFinished:
    """A run has its verdict: the last event of a run."""

    result: RunResult


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    scenario: str
    runs: tuple[RunResult, ...]
    interrupted: bool = False        # stopped early (Ctrl-C): the runs are those played so far
    logs: tuple[Any, ...] = ()       # the libraries' log lines, counted (busmon.probes.harness.logs.LogLine)

    @property
    def exit_code(self) -> int:
        return EXIT_INTERRUPTED if self.interrupted else EXIT_CODES[self.verdict]

    @property
    def exit_code_when_quit(self) -> int:
        """A person quit the dashboard: the verdict of what was found. A run cut short counts
        only for what it found (a leak, or a close that failed): quitting is not the bus failing."""
        verdicts = set()
        for r in self.runs:
            f = r.failure or {}
            if f.get("kind") == "interrupted":
                verdicts.add("failed" if f.get("close") else "leaked" if r.count("leaked") else "clean")
            else:
                verdicts.add(r.verdict)
        return EXIT_CODES[next((v for v in ("failed", "leaked") if v in verdicts), "clean")]

    @property
    def verdict(self) -> str:
        """The worst of the runs' verdicts; ``interrupted`` when a run was cut short (or none
        ended) and nothing worse was found."""
        verdicts = {r.verdict for r in self.runs}
        for v in ("failed", "leaked", "interrupted"):
            if v in verdicts:
                return v
        return "interrupted" if self.interrupted else "clean"


def signed(n: int | None) -> str:
    """``+3``, ``0``, ``-1``; ``–`` when there is nothing to compare."""
    if n is None:
        return "–"
    return f"+{n}" if n > 0 else str(n)


EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_CODES = {"clean": 0, "leaked": 1, "failed": 3, "interrupted": EXIT_INTERRUPTED}
