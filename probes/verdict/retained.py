"""Retained memory: what a bus keeps in proportion to the load.

``RetainedProbe`` takes type histograms of what the run created (``busmon.probes.observe.heap_census``): at
``mark()`` (end of subscribe), optionally at load ``checkpoint()``\\ s, and at ``judge()``, after
settle's GC and before the unfreeze. Judging:

* **rows** -- what the run created and is still alive, by type, busmon's own left out
  (``busmon.probes.observe.heap_census`` says what counts and how an object's parts fold into its row);
* **findings** -- a row whose count grew by at least ``min_count`` and ``per_envelope`` ×
  envelopes since ``mark()`` (end of subscribe). One measurement cannot tell a leak from a
  bounded cache whose bound is above both; after ``checkpoint()`` calls during load a finding
  must also still grow after the last checkpoint, at half that rate at least;
* **held_by** -- who holds one object of the row (``busmon.probes.observe.holders``). While frozen, only
  run-created holders are in sight; for an older holder ``judge`` unfreezes
  (``resolve_outside=True``) or leaves it to ``resolve()`` after the caller's unfreeze;
* **where** (``trace=True``) -- tracemalloc from the baseline (``busmon.probes.observe.alloc_sites``):
  ``allocated_at`` is the frame that made the object (its constructor's caller), ``top_sites``
  the lines holding the most memory allocated since the baseline, busmon's and its UI's files
  left out.
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any, Iterable

from busmon.probes.observe.alloc_sites import TRACE_FRAMES, allocated_at, top_sites
from busmon.probes.observe.components import package_of
from busmon.probes.observe.heap_census import OWN_MODULES, Census, own_type, take_census, type_name
from busmon.probes.observe.holders import Holders, unknown_holder
from busmon.probes.verdict.ignore import type_reason

__all__ = ["MemoryVerdict", "Retained", "RetainedProbe", "TypeCount", "own_type", "type_name"]

TOP_TYPES = 10


@dataclass(frozen=True, slots=True)
class TypeCount:
    """One row of "objects created during the run and still alive after settling"."""

    type: str               # 'module.QualName' ('builtins.list' as 'list')
    count: int
    size_bytes: int         # shallow sizes, plus the parts held only by them, counted once
    growth: int             # count minus the count at the reference point (mark), never negative

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "count": self.count, "size_bytes": self.size_bytes, "growth": self.growth}


@dataclass(frozen=True, slots=True)
class Retained:
    """A finding: retained memory that scales with the envelopes."""

    type: str
    count: int
    size_bytes: int
    per_envelope: float     # growth / envelopes
    held_by: str            # 'tests.leaky_buses.Hoarder.sent (list of 2,000)', '' if unknown
    allocated_at: str | None  # 'package/module.py:12 in fn' (tracemalloc), None untraced
    reason: str = ""        # why it is not a finding after all (an ignore rule, a runtime cache)

    def as_dict(self) -> dict[str, Any]:
        d = {"type": self.type, "count": self.count, "size_bytes": self.size_bytes,
             "per_envelope": round(self.per_envelope, 4), "held_by": self.held_by,
             "allocated_at": self.allocated_at}
        return d | ({"reason": self.reason} if self.reason else {})


@dataclass(frozen=True)
class MemoryVerdict:
    types: tuple[TypeCount, ...]      # the largest rows by size
    findings: tuple[Retained, ...]
    objects: int                      # totals of what was judged
    size_bytes: int
    traced: bool
    judge_ms: float
    top_sites: tuple[tuple[str, int, int], ...] = ()  # traced: (site, size_bytes, count), busmon's files left out
    excluded: int = 0                 # run-created objects left out as busmon's own (reachable from the roots)
    unresolved: int = 0               # findings whose holder is older than the run, awaiting resolve()
    #: what grew with the load but is not a finding: an ignore rule matched, or it is held by a
    #: cache of the runtime or of busmon (linecache, html.entities, rich's emoji table)
    ignored: tuple[Retained, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; the findings are under ``retained`` (what ``RunResult.retained()`` reads)."""
        return {"types": [t.as_dict() for t in self.types], "retained": [f.as_dict() for f in self.findings],
                "ignored": [f.as_dict() for f in self.ignored],
                "objects": self.objects, "size_bytes": self.size_bytes, "traced": self.traced,
                "judge_ms": round(self.judge_ms, 2), "top_sites": [list(s) for s in self.top_sites],
                "excluded": self.excluded}


def runtime_cache(held_by: str) -> str | None:
    """The module, when ``held_by`` names a module global of the standard library or of
    busmon's own packages (``module linecache: cache (…)``); None otherwise."""
    if not held_by.startswith("module "):
        return None
    module = held_by.removeprefix("module ").split(":", 1)[0].strip()
    return module if module.split(".", 1)[0] in sys.stdlib_module_names or package_of(module) in OWN_MODULES else None


class RetainedProbe:
    """Type histograms of what the run created: at ``mark()`` (end of subscribe), optionally at
    load ``checkpoint()``\\ s, and at ``judge()`` (after settle's GC, before ``gc.unfreeze()``)."""

    def __init__(self, *, trace: bool = False, ignore_types: tuple[str, ...] = (), min_count: int = 100,
                 per_envelope: float = 0.5, top: int = TOP_TYPES) -> None:
        self.trace = trace
        self.ignore_types = tuple(ignore_types)
        self.min_count = min_count
        self.per_envelope = per_envelope
        self.top = top
        self._started_trace = False
        self._reset()

    def _reset(self) -> None:
        self._base_ids: set[int] | None = None
        self._mark: dict[str, int] = {}
        self._checkpoints: list[tuple[int, dict[str, int]]] = []
        self._roots: list[Any] = []
        self._pending: list[tuple[int, Any, list[str]]] = []
        self._excluded_ids: set[int] = set()
        self._judged = False

    # -- phases ---------------------------------------------------------------------------

    def start(self, *, frozen: bool | None = None) -> None:
        """At the baseline, after the runner's ``gc.freeze()``. ``frozen``: whether the caller
        froze the baseline; None asks the collector, which counts the frozen objects one by one
        (with 100,000 idle tasks frozen, a 65 ms pause of the loop)."""
        self._reset()
        if frozen is None:
            frozen = gc.get_freeze_count() > 0
        if not frozen:  # nobody froze the baseline: remember it by identity
            self._base_ids = {id(o) for o in gc.get_objects()}
        if self.trace and not tracemalloc.is_tracing():
            tracemalloc.start(TRACE_FRAMES)
            self._started_trace = True

    def mark(self, *, exclude_roots: Iterable[object] = ()) -> None:
        """The reference point (end of subscribe): what the bus holds before any load.
        ``exclude_roots`` given here are remembered for the checkpoints and the judgement."""
        self._mark = self._counts(exclude_roots)

    def checkpoint(self, envelopes: int, *, exclude_roots: Iterable[object] = ()) -> None:
        """Optional, during load (say at half the envelopes): a finding must then still be
        growing after the last checkpoint, so a bounded cache that filled early does not fire.

        Taken while the bus is under load, so it is kept cheap: tracked objects counted by type
        (C-speed), without the exclusion walk or sizes; a type that busmon's records share can
        only look as if it grew less after it, never more."""
        self._roots.extend(exclude_roots)
        gc.collect()  # cheap: only what the run created is outside the frozen generation
        objs = gc.get_objects()
        if self._base_ids:
            objs = [o for o in objs if id(o) not in self._base_ids]
        by_type = Counter(map(type, objs))
        del objs
        self._checkpoints.append((envelopes, {type_name(t): n for t, n in by_type.items() if not own_type(t)}))

    def _counts(self, exclude_roots: Iterable[object]) -> dict[str, int]:
        self._roots.extend(exclude_roots)
        gc.collect()  # cheap: only what the run created is outside the frozen generation
        roots = [self, *self._roots]
        return take_census(roots, self._base_ids, full=False, extra=(roots, exclude_roots)).counts

    def judge(self, envelopes: int, *, exclude_roots: Iterable[object] = (), protect: Iterable[object] = (),
              resolve_outside: bool = True) -> MemoryVerdict:
        """After settle's ``gc.collect()``, before ``gc.unfreeze()``; once per run.

        ``protect``: objects the exclusion walk must not pass through (the bus under test, so a
        busmon record that refers to it cannot hide what it holds). ``resolve_outside``: when a
        finding's holder is older than the run, unfreeze the GC to find it (``judge`` then
        returns with nothing frozen, as after settle); False leaves that to ``resolve()``."""
        t0 = time.perf_counter()
        if self._judged:
            raise RuntimeError("judge() runs once per run; start() again for the next run")
        self._judged = True
        # judge itself has no comprehension or closure: their cells would be made at its entry,
        # before gc.get_objects(), and be counted
        traced = tracemalloc.is_tracing() and (self.trace or self._started_trace)
        roots = [self, *self._roots, *exclude_roots]
        census = take_census(roots, self._base_ids, full=True, protect=protect,
                             extra=(roots, exclude_roots, protect))
        del roots
        # after the census: the snapshot's own objects are not the run's
        snapshot = tracemalloc.take_snapshot() if traced else None
        verdict = self._verdict(census, envelopes, traced, snapshot)
        del census, snapshot
        if self._pending and resolve_outside:
            gc.unfreeze()  # get_referrers does not search the frozen generation (nothing if none is)
            verdict = self.resolve(verdict)
        if not self._pending:
            verdict = self._sort_out(verdict)
        return replace(verdict, judge_ms=(time.perf_counter() - t0) * 1000)

    def _sort_out(self, verdict: MemoryVerdict) -> MemoryVerdict:
        """Move to ``ignored`` what an ignore rule names, and what a module-level cache of the
        runtime or of busmon's own packages holds: ``linecache`` fills as anyone formats a
        stack, ``html`` and rich's tables as a report or a screen is drawn; none is the bus."""
        kept, ignored_ = [], []
        for f in verdict.findings:
            if reason := type_reason(self.ignore_types, f.type):
                ignored_.append(replace(f, reason=reason))
            elif (module := runtime_cache(f.held_by)) is not None:
                ignored_.append(replace(f, reason=f"a cache of {module} (the runtime's or busmon's own), not the bus's"))
            else:
                kept.append(f)
        return replace(verdict, findings=tuple(kept), ignored=tuple(ignored_))

    def _verdict(self, census: Census, envelopes: int, traced: bool,
                 snapshot: tracemalloc.Snapshot | None) -> MemoryVerdict:
        counts, sizes, reference = census.counts, census.sizes, self._mark
        rows = [TypeCount(name, n, sizes.get(name, 0), max(0, n - reference.get(name, 0)))
                for name, n in counts.items()]
        rows.sort(key=lambda r: (-r.size_bytes, -r.count, r.type))
        firing = [r for r in rows if self._fires(r, envelopes)]
        firing.sort(key=lambda r: (-r.size_bytes, r.type))
        samples = [census.samples.get(r.type) for r in firing]
        starts = [census.holders.get(r.type) for r in firing]
        self._excluded_ids = census.excluded
        holders = Holders(census.excluded, [samples, starts, census.samples, census.holders])
        findings: list[Retained] = []
        for i in range(len(firing)):
            r = firing[i]
            if starts[i] is not None:  # an untracked row: from the collection holding it
                c = starts[i]
                owner, stop, chain = holders.walk(c, [f"{type_name(type(c))} of {len(c):,}"])
                c = None
            else:
                owner, stop, chain = holders.walk(samples[i], [])
            if owner is None:
                self._pending.append((i, stop, chain))
            findings.append(Retained(r.type, r.count, r.size_bytes, r.growth / envelopes,
                                     owner if owner is not None else unknown_holder(chain),
                                     allocated_at(samples[i]) if traced else None))
            stop = None
        return MemoryVerdict(
            types=tuple(rows[:self.top]), findings=tuple(findings), objects=sum(counts.values()),
            size_bytes=sum(sizes.values()), traced=traced, judge_ms=0.0,
            top_sites=top_sites(snapshot) if snapshot is not None else (),
            excluded=len(census.excluded), unresolved=len(self._pending))

    def resolve(self, verdict: MemoryVerdict) -> MemoryVerdict:
        """After ``gc.unfreeze()``: name the holders ``judge`` could not see (older than the run)."""
        if not self._pending:
            return verdict
        pending, self._pending = self._pending, []
        findings = list(verdict.findings)
        holders = Holders(self._excluded_ids, [pending, *pending])
        for i, stop, chain in pending:
            owner, _, chain = holders.walk(stop, chain)
            findings[i] = replace(findings[i], held_by=owner if owner is not None else unknown_holder(chain))
        return replace(verdict, findings=tuple(findings), unresolved=0)

    def finish(self) -> None:
        """Forget the run (and stop tracemalloc if ``start`` started it)."""
        if self._started_trace and tracemalloc.is_tracing():
            tracemalloc.stop()
        self._started_trace = False
        self._reset()

    # -- judging --------------------------------------------------------------------------

    def _fires(self, row: TypeCount, envelopes: int) -> bool:
        if envelopes <= 0 or row.growth < self.min_count or row.growth < self.per_envelope * envelopes:
            return False
        earlier = [(n, c) for n, c in self._checkpoints if n < envelopes]
        if earlier:  # still growing after the last checkpoint: not a bound that was reached
            n, counts = earlier[-1]
            rate = (row.count - counts.get(row.type, 0)) / (envelopes - n)
            return rate >= self.per_envelope / 2
        return True
