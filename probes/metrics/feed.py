"""What the metrics say, kept from the events busmon already makes.

``busmon play`` hands every arena event to :meth:`MetricsFeed.put` (as it does to ``--record``):
the latest :class:`~busmon.probes.model.Sample` is the live tasks by component, and the runs'
publishes, deliveries and errors add up to counters that only grow, across runs. The agent
inside a program (``busmon run``) has no sampler running: its feed is given ``refresh``, which
asks each watched loop for a sample when Prometheus scrapes (bounded; a loop that does not
answer in time, blocked, keeps its last one). Every verdict (:class:`RunFinished`) sets the
verdict and leftovers gauges. Any thread may put; the scrape reads a consistent copy.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from busmon.bus.counters import ERROR_COUNTERS
from busmon.probes.model import PhaseStarted, RunFinished, Sample

#: components named in busmon_tasks unless asked otherwise (the rest: other)
DEFAULT_TOP = 20
#: the bus's error kinds the play metrics add up (a sample's names for them)
ERROR_KINDS = tuple(ERROR_COUNTERS)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The last verdict, for its gauges."""

    verdict: str
    at: float                               # wall-clock seconds (time.time())
    leftovers: Mapping[tuple[str, str], int]  # (kind, state) -> how many


@dataclass(frozen=True, slots=True)
class FeedReading:
    """One scrape's worth, copied under the feed's lock."""

    tasks_by_component: Mapping[str, int]
    published: int
    delivered: int
    errors: Mapping[str, int]
    verdicts: Mapping[str, int]             # verdict -> how many so far
    last: Verdict | None
    generation: int                         # how many verdicts so far (a scrape after the last one)


@dataclass
class _RunCounts:
    """One run's counts so far (they only grow within a run)."""

    run: str
    published: int = 0
    delivered: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    finished: bool = False


class MetricsFeed:
    """The metrics' state, fed by events; read at each scrape."""

    def __init__(self, refresh: Callable[[float], list[Sample]] | None = None, refresh_timeout_s: float = 0.5) -> None:
        self._lock = threading.Lock()
        self._refresh = refresh
        self._refresh_timeout_s = refresh_timeout_s
        self._samples: dict[str, Sample] = {}      # play: the one arena ("" key); run: per loop
        self._run: _RunCounts | None = None
        self._carried = _RunCounts("")
        self._verdicts: collections.Counter[str] = collections.Counter()
        self._last: Verdict | None = None
        self._generation = 0

    # -- events (any thread) -----------------------------------------------------------------

    def put(self, event: object) -> None:
        if isinstance(event, Sample):
            self._sample(event)
        elif isinstance(event, RunFinished):
            self._finished(event)
        elif isinstance(event, PhaseStarted):
            self._phase(event)

    def _sample(self, s: Sample) -> None:
        with self._lock:
            key = "" if self._refresh is None else s.run
            self._samples[key] = s
            if not s.run or self._refresh is not None:
                return  # between runs (the last run's counts linger in it), or a program's loop
            run = self._run
            if run is not None and run.finished and run.run == s.run:
                return  # the finished run's last samples: already counted whole
            if run is None or run.run != s.run or s.published < run.published or s.delivered < run.delivered:
                self._carry()
                run = self._run = _RunCounts(s.run)
            run.published, run.delivered = s.published, s.delivered
            for kind, n in s.errors.items():
                run.errors[kind] = max(run.errors.get(kind, 0), n)

    def _phase(self, p: PhaseStarted) -> None:
        with self._lock:
            run = self._run
            if run is not None and run.finished and run.run == p.run:
                self._carry()  # the same name played again (compare): a new run's counts from here

    def _finished(self, event: RunFinished) -> None:
        r = event.result
        with self._lock:
            if r.backend != "program":
                run = self._run if self._run is not None and self._run.run == r.name else None
                if run is None:
                    self._carry()
                    run = self._run = _RunCounts(r.name)
                run.published = max(run.published, int(r.delivery.get("published", 0)))
                run.delivered = max(run.delivered, int(r.delivery.get("received", 0)))
                for kind, counter in ERROR_COUNTERS.items():
                    n = int(r.counters.get(counter, 0))
                    if n > 0:
                        run.errors[kind] = max(run.errors.get(kind, 0), n)
                run.finished = True
            left: collections.Counter[tuple[str, str]] = collections.Counter((lo.kind, lo.state) for lo in r.leftovers)
            self._verdicts[r.verdict] += 1
            self._last = Verdict(r.verdict, time.time(), dict(left))
            self._generation += 1

    def _carry(self) -> None:
        """Add the current run's counts to what earlier runs counted (under the lock)."""
        run, c = self._run, self._carried
        if run is None:
            return
        c.published += run.published
        c.delivered += run.delivered
        for kind, n in run.errors.items():
            c.errors[kind] = c.errors.get(kind, 0) + n
        self._run = None

    # -- the scrape ----------------------------------------------------------------------------

    def read(self) -> FeedReading:
        """A consistent copy (a program's loops are asked for fresh samples first)."""
        if self._refresh is not None:
            fresh = self._refresh(self._refresh_timeout_s)
            with self._lock:
                for s in fresh:
                    self._samples[s.run] = s
        with self._lock:
            by_component: collections.Counter[str] = collections.Counter()
            for s in self._samples.values():
                by_component.update(s.by_component)
            run, c = self._run, self._carried
            published = c.published + (run.published if run else 0)
            delivered = c.delivered + (run.delivered if run else 0)
            errors = {k: c.errors.get(k, 0) + (run.errors.get(k, 0) if run else 0) for k in ERROR_KINDS}
            return FeedReading(dict(by_component), published, delivered, errors, dict(self._verdicts),
                               self._last, self._generation)

    def forget_loop(self, run: str) -> None:
        """A program's loop ended: its tasks are no longer live."""
        with self._lock:
            self._samples.pop(run, None)

    @property
    def generation(self) -> int:
        with self._lock:
            return self._generation
