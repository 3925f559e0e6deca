"""The sampler: reads every probe on the arena loop and hands out immutable Samples.

It runs as one task (``busmon.sampler``) started before any baseline, so it is
part of every baseline and never shows up as a leftover. Per tick it does only
cheap work: incremental task counts, ``threading.active_count``, one psutil
oneshot, two counter deltas and a histogram summary.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from busmon.bus.counters import ERROR_COUNTERS
from busmon.probes.harness.audit import DeliveryAudit
from busmon.probes.observe.fds import fd_table, identities, new_sockets
from busmon.probes.model import Sample
from busmon.probes.observe.process import ProcessProbe
from busmon.probes.harness.throughput import RateMeter
from busmon.probes.observe.tracking import TaskTracker


@dataclass
class LiveState:
    """What the runner is doing now; written by the runner, read by the sampler (same loop)."""

    run: str = ""
    phase: str = ""
    t0: float = field(default_factory=time.monotonic)
    published: int = 0
    audit: DeliveryAudit | None = None
    peaks: dict[str, dict[str, int]] = field(default_factory=dict)
    base_fds: frozenset[tuple[int, str]] | None = None   # the run's baseline descriptors
    baseline_at: float | None = None
    counters: Any = None             # the bus's BusCounters (its error counts), if it keeps them

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def note_peak(self, phase: str, tasks: int, threads: int, os_threads: int) -> None:
        """Keep the highest counts seen in ``phase``, from samples and from phase snapshots."""
        peak = self.peaks.setdefault(phase, {"tasks": 0, "threads": 0, "os_threads": 0})
        peak["tasks"] = max(peak["tasks"], tasks)
        peak["threads"] = max(peak["threads"], threads)
        peak["os_threads"] = max(peak["os_threads"], os_threads)


def bus_errors(counters: Any) -> dict[str, int]:
    """The bus's errors so far, those above zero (a bus without counters has none to tell)."""
    if counters is None:
        return {}
    out = {}
    for kind, attr in ERROR_COUNTERS.items():
        n = getattr(counters, attr, 0)
        if isinstance(n, int) and n > 0:
            out[kind] = n
    return out


class Sampler:
    def __init__(self, tracker: TaskTracker, state: LiveState, sink: Callable[[object], None],
                 interval_ms: int = 100, loopwatch: Any = None) -> None:
        self.tracker = tracker
        self.loopwatch = loopwatch
        self.state = state
        self.sink = sink
        self.interval_ms = interval_ms
        self.process = ProcessProbe()
        self._pub = RateMeter()
        self._del = RateMeter()
        self.paused = False

    def set_interval(self, interval_ms: int) -> None:
        self.interval_ms = max(10, int(interval_ms))

    def reset_rates(self) -> None:
        self._pub.reset(self.state.published)
        self._del.reset(self.state.audit.received if self.state.audit else 0)

    def read(self) -> Sample:
        st = self.state
        now = time.monotonic()
        lw = self.loopwatch
        if lw is not None:
            # classifying the tasks created since the last tick is busmon's work, and grows with
            # them (100,000 tasks started at once: one tick of ~250 ms): never a stall of the bus's
            with lw.own_work():
                by_component = self.tracker.counts()
        else:
            by_component = self.tracker.counts()
        tasks = sum(by_component.values())
        threads = threading.active_count()
        proc = self.process.read()
        audit = st.audit
        delivered = audit.received if audit else 0
        sample = Sample(
            run=st.run, phase=st.phase, t_s=round(now - st.t0, 3), tasks=tasks, threads=threads,
            os_threads=proc.os_threads, by_component=by_component, published=st.published,
            delivered=delivered, expected=audit.expected if audit else 0,
            publish_per_s=round(self._pub.rate(st.published, now), 1),
            deliver_per_s=round(self._del.rate(delivered, now), 1),
            latency_ms=audit.latency.summary_ms() if audit and audit.latency.count else {},
            rss_mb=proc.rss_mb, cpu_percent=proc.cpu_percent, open_fds=proc.open_fds,
            sockets=self._new_sockets(), errors=bus_errors(st.counters), **self._loop_health(),
        )
        st.note_peak(st.phase, tasks, threads, proc.os_threads)
        return sample

    def _new_sockets(self) -> int:
        base = self.state.base_fds
        table = fd_table() if base is not None else None
        if table is None or base is None:
            return 0
        return new_sockets(identities(table), base)

    def _loop_health(self) -> dict[str, Any]:
        lw, since = self.loopwatch, self.state.baseline_at
        if lw is None:
            return {}
        return {"loop_lag_ms": lw.lag_now(), "stalls": len(lw.stalls_since(since)) if since else 0}

    async def run(self) -> None:
        """Sample until cancelled: periodic by design, not a wait for something to happen."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            self.sink(self.read())
            next_at += self.interval_ms / 1000
            delay = next_at - loop.time()
            if delay < 0:  # fell behind (a long phase step): do not burst to catch up
                next_at = loop.time()
                delay = 0
            await asyncio.sleep(delay)
