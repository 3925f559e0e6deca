"""Retained memory: what a bus keeps in proportion to the load.

The runner freezes everything alive at the baseline (``gc.collect(); gc.freeze()``), so until
settle unfreezes, ``gc.get_objects()`` lists only GC-tracked objects the run created (plus the
few older containers that became tracked during the run, e.g. a module's empty dict that got
its first tracked value). Checked on CPython 3.11: frozen objects sit in the permanent
generation, which neither ``gc.get_objects()`` nor ``gc.get_referrers()`` searches. When
nothing is frozen at ``start()``, the ids alive then are remembered instead.

Judging, after settle's GC and before the unfreeze:

* **what counts** -- every run-created object except: what is reachable from ``exclude_roots``
  (busmon's records; the walk goes through run-created objects freely, through older ones for
  at most ``OUTSIDE_HOPS`` in a row, and never through code, cells, frames, coroutines, tasks,
  event loops and their handles, threads, types, modules, ``protect``, or busmon objects that
  are not roots: a ``RunContext`` holds the bus), frames, and objects whose type is defined in
  ``probes.*``, ``tui.*``, ``textual.*`` or ``rich.*``;
* **rows** -- one per type (``module.QualName``, builtins bare). Untracked objects (``bytes``,
  ``str``, ``int``, atomic tuples and dicts) are found as referents of what counts, and counted
  (once) only when *every* reference to them comes from what counts (``sys.getrefcount``): a
  payload shared with busmon or with other code is not the run's retained memory. An object's
  parts fold into its row's ``size_bytes`` instead of making rows of their own: the untracked
  fields of a record (an instance, a tuple, a named tuple), a builtin collection only one record
  holds (its ``__dict__``, ``self.sent``'s list object), and the items of a collection with fewer
  than ``FOLD_ITEMS`` items. The items of a larger collection are rows: a list of 2,000 ``bytes``
  shows ``bytes 2,000``, while 2,000 envelopes show one envelope row whose size includes the
  payloads, keys and numbers only they hold (one finding, not four);
* **findings** -- a row whose count grew by at least ``min_count`` and ``per_envelope`` ×
  envelopes since ``mark()`` (end of subscribe). One measurement cannot tell a leak from a
  bounded cache whose bound is above both; after ``checkpoint()`` calls during load a finding
  must also still grow after the last checkpoint, at half that rate at least;
* **held_by** -- ``gc.get_referrers`` walked up from one object of the row (from the largest
  collection holding an untracked row: the GC cannot see an untracked holder), a few levels:
  ``tests.leaky_buses.Hoarder.sent (list of 2,000)``, ``module x.y: CACHE (dict of 2,000)``,
  ``x.y.Bus.CACHE (class attribute, list of 500)``, ``x.y.fn (closure variable 'kept', …)``,
  ``x.y.Worker.run (coroutine local 'buf', …)``. While frozen, only run-created holders are
  in sight; for an older holder ``judge`` unfreezes (``resolve_outside=True``) or leaves it to
  ``resolve()`` after the caller's unfreeze;
* **where** (``trace=True``) -- tracemalloc from the baseline: ``allocated_at`` is the frame that
  made the object (its constructor's caller), ``top_sites`` the lines holding the most memory
  allocated since the baseline, busmon's and its UI's files left out.

Limitation: untracked objects added to a container older than the run (a module-level list of
``bytes`` made at import) are not found: nothing the run created refers to them (``top_sites``
shows them when tracing).
"""

from __future__ import annotations

import asyncio
import fnmatch
import gc
import operator
import os
import sys
import threading
import time
import tracemalloc
import types
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field, replace
from itertools import compress, filterfalse, repeat
from operator import not_
from typing import Any, Iterable

TOP_TYPES = 10
TOP_SITES = 10
#: a collection with fewer items folds them into its owner's row; a larger one makes them rows
FOLD_ITEMS = 32
#: how many objects older than the run the exclusion walk may pass through in a row
OUTSIDE_HOPS = 4
#: how far up ``held_by`` looks for a named owner
HOLDER_LEVELS = 6
#: frames tracemalloc keeps per allocation: enough to step out of the constructors
TRACE_FRAMES = 4
#: busmon's own modules and its UI's: their objects are never judged
OWN_MODULES = ("probes", "tui", "textual", "rich")

# Counter() asks isinstance(arg, Mapping): the ABC caches it answers from grow (weakrefs, sets)
# the first time; let that happen now, not as a run's objects
Counter([]), Counter(filter(None, ()))

_COLLECTIONS = (list, dict, set, frozenset, deque)
#: builtin collections (and plain tuples) that fold into the one record holding them
_FOLDABLE = frozenset({list, dict, set, frozenset, deque, tuple})
_BLOCKED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
            types.CodeType, types.FrameType, types.CellType, types.GeneratorType, types.CoroutineType,
            types.AsyncGeneratorType, asyncio.Future, asyncio.AbstractEventLoop, asyncio.Handle,
            threading.Thread)
_SUSPENDED = (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType)


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

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, "count": self.count, "size_bytes": self.size_bytes,
                "per_envelope": round(self.per_envelope, 4), "held_by": self.held_by,
                "allocated_at": self.allocated_at}


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

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; the findings are under ``retained`` (what ``RunResult.retained()`` reads)."""
        return {"types": [t.as_dict() for t in self.types], "retained": [f.as_dict() for f in self.findings],
                "objects": self.objects, "size_bytes": self.size_bytes, "traced": self.traced,
                "judge_ms": round(self.judge_ms, 2), "top_sites": [list(s) for s in self.top_sites],
                "excluded": self.excluded}


@dataclass
class _Census:
    counts: dict[str, int]
    sizes: dict[str, int] = field(default_factory=dict)
    samples: dict[str, Any] = field(default_factory=dict)
    excluded: set[int] = field(default_factory=set)
    holders: dict[str, Any] = field(default_factory=dict)  # untracked rows: the largest collection of them


class _TypeInfo:
    __slots__ = ("name", "skip", "collection")

    def __init__(self, t: type) -> None:
        self.name = type_name(t)
        self.skip = t is types.FrameType or own_type(t)
        self.collection = issubclass(t, _COLLECTIONS)


def type_name(t: type) -> str:
    """``module.QualName``; a builtin's bare name."""
    module = getattr(t, "__module__", None) or "?"
    qual = getattr(t, "__qualname__", None) or getattr(t, "__name__", "?")
    return qual if module == "builtins" else f"{module}.{qual}"


def own_type(t: type) -> bool:
    """A type defined in busmon (``probes``, ``tui``) or its UI (``textual``, ``rich``)."""
    module = getattr(t, "__module__", None) or ""
    return isinstance(module, str) and module.split(".", 1)[0] in OWN_MODULES


def ignored(name: str, patterns: Iterable[str]) -> bool:
    bare = name.rsplit(".", 1)[-1]
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(bare, p) for p in patterns)


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

    def start(self) -> None:
        """At the baseline, after the runner's ``gc.freeze()``."""
        self._reset()
        if gc.get_freeze_count() == 0:  # nobody froze the baseline: remember it by identity
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
        growing after the last checkpoint, so a bounded cache that filled early does not fire."""
        self._checkpoints.append((envelopes, self._counts(exclude_roots)))

    def _counts(self, exclude_roots: Iterable[object]) -> dict[str, int]:
        self._roots.extend(exclude_roots)
        gc.collect()  # cheap: only what the run created is outside the frozen generation
        roots = [self, *self._roots]
        return self._census(roots, full=False, extra=(roots, exclude_roots)).counts

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
        census = self._census(roots, full=True, protect=protect, extra=(roots, exclude_roots, protect))
        del roots
        # after the census: the snapshot's own objects are not the run's
        snapshot = tracemalloc.take_snapshot() if traced else None
        verdict = self._verdict(census, envelopes, traced, snapshot)
        del census, snapshot
        if self._pending and resolve_outside:
            if gc.get_freeze_count():
                gc.unfreeze()  # get_referrers does not search the frozen generation
            verdict = self.resolve(verdict)
        return replace(verdict, judge_ms=(time.perf_counter() - t0) * 1000)

    def _verdict(self, census: _Census, envelopes: int, traced: bool,
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
        holders = _Holders(census.excluded, [samples, starts, census.samples, census.holders])
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
                                     owner if owner is not None else _unknown(chain),
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
        holders = _Holders(self._excluded_ids, [pending, *pending])
        for i, stop, chain in pending:
            owner, _, chain = holders.walk(stop, chain)
            findings[i] = replace(findings[i], held_by=owner if owner is not None else _unknown(chain))
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
        if ignored(row.type, self.ignore_types):
            return False
        earlier = [(n, c) for n, c in self._checkpoints if n < envelopes]
        if earlier:  # still growing after the last checkpoint: not a bound that was reached
            n, counts = earlier[-1]
            rate = (row.count - counts.get(row.type, 0)) / (envelopes - n)
            return rate >= self.per_envelope / 2
        return True

    def _census(self, roots: list[Any], *, full: bool, protect: Iterable[object] = (),
                extra: Iterable[object] = ()) -> _Census:
        """Rows of what the run created, busmon's own left out (see the module's docstring)."""
        # no comprehension, lambda or closure in here may use a local: its cell would be made at
        # entry, before gc.get_objects(), and be counted
        objs = gc.get_objects()
        run_ids = set(map(id, objs))
        if self._base_ids is not None:
            run_ids -= self._base_ids
        excluded = _reachable(roots, run_ids, set(map(id, protect)))
        for i in (id(extra), *map(id, extra)):  # our own lists
            if i in run_ids:
                excluded.add(i)
        box = [objs]
        del objs  # _rows counts references: this frame must not hold the objects
        try:
            return _rows(box, run_ids, excluded, full)
        finally:
            _SIZERS.clear()  # it holds types: the run's classes must not outlive it here


def _rows(box: list[list[Any]], run_ids: set[int], excluded: set[int], full: bool) -> _Census:
    """Counts, sizes and a sample per row.

    Exclusive ownership is decided by reference counts: an object counts as a part (or, when
    untracked, at all) only when every reference to it comes from the objects counted. The
    references this function holds itself are calibrated with a sentinel kept exactly like the
    candidates, so no loop variable may be left holding a candidate when counts are taken."""
    objs = box.pop()
    if len(run_ids) != len(objs):  # start() found nothing frozen: drop the baseline's
        objs = list(compress(objs, map(run_ids.__contains__, map(id, objs))))
    if excluded:
        objs = list(compress(objs, map(not_, map(excluded.__contains__, map(id, objs)))))
    groups: dict[type, list[Any]] = defaultdict(list)
    for o in objs:
        groups[type(o)].append(o)
    o = None
    del objs
    names: dict[type, str] = {}
    records: dict[type, list[Any]] = {}
    colls: list[Any] = []
    for t, group in groups.items():
        ti = _TypeInfo(t)
        if ti.skip:
            continue
        names[t] = ti.name
        if ti.collection:
            colls.extend(group)
        else:
            records[t] = group
    groups.clear()
    group = None
    kept = run_ids - excluded
    counts: dict[str, int] = {}
    sizes: dict[str, int] = {}
    samples: dict[str, Any] = {}
    untracked = _Untracked()
    is_tracked = gc.is_tracked
    # untracked rows: the largest collection holding each type (get_referrers cannot see an
    # untracked holder, such as a dict of str -> bool)
    holders: dict[type, Any] = {}

    # records: their untracked fields fold into them, and so do the builtin collections and
    # tuples one record alone holds (its __dict__, self.sent's list object), and those that
    # such a __dict__ alone holds
    folds = _Folds(kept)
    for t, group in records.items():
        name = names[t]
        flat = gc.get_referents(*group)
        mask = list(map(is_tracked, flat))
        if t is not tuple:  # a tuple's fields: below, once we know where it folds
            untracked.add(list(compress(flat, map(not_, mask))), name)
        tracked = list(compress(flat, mask))
        flat = None
        if any(map(_FOLDABLE.__contains__, map(type, tracked))):  # who holds which: one by one
            for r in group:
                for x in gc.get_referents(r):
                    if type(x) in _FOLDABLE and id(x) in kept:
                        folds.note(x, r, name)
            r = x = None
        tracked = None
    group = None
    for _round in range(4):
        sources = folds.settle(colls)
        if not sources:
            break
        for d in sources:  # an instance's __dict__: what it alone holds is the instance's too
            for x in dict.values(d):
                if type(x) in _FOLDABLE and id(x) in kept:
                    folds.note(x, d)
        d = x = sources = None
    for t, group in records.items():
        name = names[t]
        if t is tuple:
            rows_: list[Any] = []
            parts: dict[str, list[Any]] = defaultdict(list)
            for x in group:
                owner = folds.owner(id(x))
                if owner is None:
                    rows_.append(x)
                else:
                    parts[owner].append(x)
            x = None
            parts["tuple"] = rows_
            for owner, tuples in parts.items():
                if not tuples:
                    continue
                if full and owner != "tuple":
                    sizes[owner] = sizes.get(owner, 0) + _size(tuple, tuples)
                untracked.add(list(filterfalse(is_tracked, gc.get_referents(*tuples))), owner)
            parts = tuples = None
            group = rows_
            rows_ = None
            if not group:
                continue
        counts[name] = counts.get(name, 0) + len(group)
        if full:
            sizes[name] = sizes.get(name, 0) + _size(t, group)
            samples[name] = group[-1]
    group = None
    records.clear()

    # collections: their items are rows when there are many, parts of their row otherwise
    small: dict[str, list[Any]] = defaultdict(list)
    for c in colls:
        name = names[type(c)]
        owner = folds.owner(id(c))
        row = owner or name
        if owner is None:
            counts[name] = counts.get(name, 0) + 1
            if full:
                samples[name] = c
        if full:
            sizes[row] = sizes.get(row, 0) + _size(type(c), (c,))
        if len(c) >= FOLD_ITEMS or isinstance(c, dict):
            items = _untracked_items(c)
            if len(c) >= FOLD_ITEMS:
                _biggest_holder(holders, c, items)
            untracked.add(items, None if len(c) >= FOLD_ITEMS else row)
            items = None
        else:
            small[row].append(c)
    c = None
    colls.clear()
    for row, group in small.items():
        untracked.add(list(filterfalse(is_tracked, gc.get_referents(*group))), row)
    group = None
    small.clear()

    # untracked objects, layer by layer (an atomic tuple inside an atomic dict...)
    for _layer in range(8):
        objs, owners = untracked.settle()
        if not objs:
            break
        rows: dict[str, list[Any]] = defaultdict(list)
        nested: dict[str | None, list[Any]] = defaultdict(list)
        is_row = list(map(operator.is_, owners, repeat(None)))
        for o in compress(objs, is_row):
            t = type(o)
            rows[names.get(t) or names.setdefault(t, type_name(t))].append(o)
        if full:  # by type and owner: few of each, one C-level pass per pair
            kinds = list(map(type, objs))
            for t in set(kinds):
                mask = list(map(operator.is_, kinds, repeat(t)))
                mine, whose = list(compress(objs, mask)), list(compress(owners, mask))
                sz = _sizes(t, mine)
                for owner in set(whose):
                    row = owner or names.get(t) or names.setdefault(t, type_name(t))
                    sizes[row] = sizes.get(row, 0) + sum(compress(sz, map(operator.eq, whose, repeat(owner))))
                mine = sz = None
            del kinds, mask, whose
        conts = list(map(_UNTRACKED_CONTAINERS.__contains__, map(type, objs)))
        if any(conts):
            for o, owner in zip(compress(objs, conts), compress(owners, conts)):
                if not len(o):
                    continue
                row = owner or type_name(type(o))
                nested[row if type(o) is tuple or len(o) < FOLD_ITEMS else None].append(o)
        o = group = None
        del objs, owners, is_row, conts
        for name, group in rows.items():
            counts[name] = counts.get(name, 0) + len(group)
            if full:
                samples[name] = group[-1]
        group = None
        rows.clear()
        for owner, group in nested.items():
            for c in group:
                items = _untracked_items(c)
                if owner is None:
                    _biggest_holder(holders, c, items)
                untracked.add(items, owner)
                items = None
        c = group = None
        nested.clear()
    by_name = {names[t]: c for t, c in holders.items() if t in names and names[t] in counts} if full else {}
    return _Census(counts, sizes, samples, excluded, by_name)


def _biggest_holder(holders: dict[type, Any], c: Any, items: list[Any]) -> None:
    for t in set(map(type, items)):
        held = holders.get(t)
        if held is None or len(held) < len(c):
            holders[t] = c


class _Folds:
    """Builtin collections and tuples that are parts of one record: met once among the
    referents of what counts, and referenced once (a reference count one above a sentinel held
    as the candidates are)."""

    def __init__(self, kept: set[int]) -> None:
        self.kept = kept
        self.objs: dict[int, Any] = {}        # this round's candidates
        self.met: Counter[int] = Counter()
        self.holder: dict[int, int] = {}      # candidate id -> the first holder's id
        self.folded: dict[int, int] = {}      # part id -> holder id
        self.names: dict[int, str] = {}       # record id -> its row

    def note(self, x: Any, holder: Any, name: str | None = None) -> None:
        i = id(x)
        self.objs[i] = x
        self.met[i] += 1
        self.holder.setdefault(i, id(holder))
        if name is not None:
            self.names[id(holder)] = name

    def settle(self, ours: list[Any]) -> list[Any]:
        """Confirm this round's candidates (each also held by ``ours`` or, for a tuple, by our
        list of tuples: one list of ours either way); return the new parts that are
        namespaces (an instance's materialised ``__dict__``: few items, all named by str)."""
        if not self.objs:
            return []
        objs, self.objs = self.objs, {}
        sentinel: Any = []
        ours.append(sentinel)
        objs[id(sentinel)] = sentinel
        sentinel = None
        values = list(objs.values())
        refcounts = list(map(sys.getrefcount, values))
        base = refcounts.pop()
        values.pop()
        objs.popitem()
        ours.pop()
        namespaces: list[Any] = []
        for (i, x), rc in zip(objs.items(), refcounts):
            if rc == base + 1 and self.met[i] == 1 and i in self.kept:
                self.folded[i] = self.holder[i]
                if type(x) is dict and len(x) < FOLD_ITEMS and all(type(k) is str for k in x):
                    namespaces.append(x)
        x = None
        return namespaces

    def owner(self, i: int) -> str | None:
        """The row a part folds into: its record's, through the parts holding it."""
        h = self.folded.get(i)
        for _ in range(8):
            if h is None or h not in self.folded:
                break
            h = self.folded[h]
        return self.names.get(h) if h is not None else None


_SIZERS: dict[type, tuple[Any, int]] = {}


def _sizes(t: type, objs: list[Any]) -> list[int]:
    """``sys.getsizeof`` of each (all of type ``t``), without its cost while tracemalloc traces:
    getsizeof makes a bound method per call, ``t.__sizeof__`` does not. The GC header it adds
    is the same for every object of the type."""
    if not objs:
        return []
    sizer = _SIZERS.get(t)
    try:
        if sizer is None:
            f = t.__sizeof__
            sizer = _SIZERS[t] = (f, sys.getsizeof(objs[0]) - f(objs[0]))
        f, extra = sizer
        sizes = list(map(f, objs))
        return list(map(operator.add, sizes, repeat(extra))) if extra else sizes
    except Exception:
        return list(map(sys.getsizeof, objs))


def _size(t: type, objs: Any) -> int:
    return sum(_sizes(t, list(objs)))


_UNTRACKED_CONTAINERS = frozenset({tuple, dict, frozenset})


def _untracked_items(c: Any) -> list[Any]:
    """A collection's untracked items (a dict's keys too: a str-keyed dict does not show
    its keys to ``gc.get_referents``)."""
    items = [*dict.keys(c), *dict.values(c)] if isinstance(c, dict) else gc.get_referents(c)
    return list(filterfalse(gc.is_tracked, items))


class _Untracked:
    """Untracked objects met as referents of what counts, and the row each folds into (None: a
    row of its own, which wins over folding)."""

    def __init__(self) -> None:
        self.objs: list[Any] = []                # references met since the last settle()
        self.owners: list[str | None] = []
        self.pending: dict[int, list[Any]] = {}  # id -> [object, references met, owner]: not accounted for yet

    def add(self, objs: list[Any], owner: str | None) -> None:
        self.objs.extend(objs)
        self.owners.extend(repeat(owner, len(objs)))

    def settle(self) -> tuple[list[Any], list[str | None]]:
        """The objects met since the last call (or pending) whose every reference has been met."""
        objs, owners = self.objs, self.owners
        self.objs, self.owners = [], []
        if not objs:
            return [], []
        # Fast path: an object met once, and referenced once (that reference), has one more
        # reference than a sentinel held once in the same list. Met twice, it has at least two
        # more; pending from an earlier settle, at least two more too.
        sentinel = time.perf_counter() + 0.5
        objs.append(sentinel)
        sentinel = None
        refcounts = list(map(sys.getrefcount, objs))
        once = refcounts.pop() + 1
        objs.pop()
        fast = list(map(operator.eq, refcounts, repeat(once)))
        del refcounts
        done = list(compress(objs, fast))
        done_owners = list(compress(owners, fast))
        if all(fast):
            return done, done_owners
        slow = list(map(not_, fast))
        objs, owners = list(compress(objs, slow)), list(compress(owners, slow))
        del fast, slow
        ids = list(map(id, objs))
        met = Counter(ids)
        first = dict(zip(reversed(ids), reversed(owners)))
        rows = set(compress(ids, map(operator.is_, owners, repeat(None))))
        pending = self.pending
        unique = dict(zip(ids, objs))
        del objs, owners, ids
        for i, o in unique.items():  # few: what many share (a topic name, a common payload)
            e = pending.get(i)
            if e is None:
                pending[i] = [o, met[i], None if i in rows else first[i]]
            else:
                e[1] += met[i]
                if i in rows:
                    e[2] = None
        check = list(unique)
        o = e = unique = None
        # each is held once by pending and once by values, like the sentinel
        sentinel = time.perf_counter() + 0.5
        pending[id(sentinel)] = [sentinel, 0, None]
        values = [pending[i][0] for i in check]
        values.append(sentinel)
        sentinel = None
        refcounts = list(map(sys.getrefcount, values))
        base = refcounts.pop()
        del pending[id(values.pop())], values
        for i, rc in zip(check, refcounts):
            e = pending[i]
            if rc - base == e[1]:
                done.append(e[0])
                done_owners.append(e[2])
                del pending[i]
        e = None
        return done, done_owners


def _reachable(roots: list[Any], run_ids: set[int], protect: set[int]) -> set[int]:
    """Ids of the run-created objects reachable from ``roots`` (busmon's records).

    Through run-created objects the walk goes as far as it leads; through older ones (a record
    made before the baseline, its frozen list) at most ``OUTSIDE_HOPS`` in a row, and never
    through a busmon object that is not a root. Never through code, frames, coroutines, tasks,
    threads, types, modules or ``protect``: they lead to everything, the bus included."""
    excluded = {id(r) for r in roots if id(r) in run_ids and id(r) not in protect}
    outside: set[int] = set()
    kinds: dict[type, int] = {}  # 0: walk, 1: never, 2: not when older than the run (busmon's)
    is_tracked = gc.is_tracked
    waves: dict[int, list[Any]] = {OUTSIDE_HOPS: [r for r in roots if id(r) not in protect]}
    while waves:
        nxt: dict[int, list[Any]] = defaultdict(list)
        for budget, objs in waves.items():
            walk_in, walk_out = nxt[OUTSIDE_HOPS], nxt[budget - 1]
            for r in filter(is_tracked, gc.get_referents(*objs)):  # the untracked lead nowhere
                i = id(r)
                if i in excluded or i in protect:
                    continue
                t = type(r)
                kind = kinds.get(t)
                if kind is None:
                    kind = kinds[t] = 1 if issubclass(t, _BLOCKED) else \
                        2 if own_type(t) and t.__module__.split(".", 1)[0] == "probes" else 0
                if i in run_ids:
                    excluded.add(i)
                    if kind != 1:
                        walk_in.append(r)
                elif budget > 0 and kind == 0 and i not in outside:
                    outside.add(i)
                    walk_out.append(r)
            objs = r = None
        waves = {b: objs for b, objs in nxt.items() if objs}
    return excluded


# -- who holds it -------------------------------------------------------------------------

class _Holders:
    """Walks ``gc.get_referrers`` up from an object to a named owner."""

    def __init__(self, excluded: set[int], keep: list[Any]) -> None:
        self.excluded = excluded
        self.keep: list[Any] = [*keep]  # our own lists: never a holder
        self.modules = {id(vars(m)): name for name, m in list(sys.modules.items())
                        if isinstance(m, types.ModuleType)}

    def _skip(self) -> set[int]:
        return {id(self.keep), *map(id, self.keep)}

    def referrers(self, obj: Any) -> list[Any]:
        skip = self._skip()
        out = [r for r in gc.get_referrers(obj)
               if id(r) not in skip and id(r) not in self.excluded and type(r) is not types.FrameType
               and not own_type(type(r))]
        self.keep.append(out)
        return out

    def walk(self, obj: Any, chain: list[str]) -> tuple[str | None, Any, list[str]]:
        """(the holder, or None when none is in reach; where the walk stopped; containers passed)."""
        chain = list(chain)
        for _ in range(HOLDER_LEVELS):
            refs = self.referrers(obj)
            if not refs:
                return None, obj, chain
            r, best = None, 99
            for x in refs:  # no lambda: its cell would hold obj and be found as a holder
                rank = self._rank(x, obj)
                if rank < best:
                    r, best = x, rank
            x = refs = None
            owner, up = self._step(r, obj, chain)
            if owner is not None:
                return _fmt(owner, chain), r, chain
            obj = up
        return _fmt("…", chain), obj, chain  # deeper than HOLDER_LEVELS

    def _rank(self, r: Any, obj: Any) -> int:
        if id(r) in self.modules:
            return 0
        if isinstance(r, dict):
            return 3
        if isinstance(r, (list, tuple, set, frozenset, deque)):
            return 4
        if isinstance(r, _SUSPENDED):
            return 2
        if isinstance(r, (types.CellType, types.FunctionType, types.MethodType, type)):
            return 5
        return 5 if type(r) is type(obj) else 1

    def _step(self, r: Any, obj: Any, chain: list[str]) -> tuple[str | None, Any]:
        """One level: the owner's name, or None and the container to climb from."""
        if id(r) in self.modules:
            return f"module {self.modules[id(r)]}: {_key(r, obj)}", None
        if isinstance(r, dict):
            key = _key(r, obj)
            for x in self.referrers(r):
                if isinstance(x, type):  # a class's namespace
                    if _class_dict(x, r):
                        return f"{type_name(x)}.{key} (class attribute)", None
                elif not isinstance(x, types.ModuleType) and _safe_dict(x) is r:
                    return f"{type_name(type(x))}.{key}", None
            chain.append(f"{type_name(type(r))} of {len(r):,}")
            return None, r
        if isinstance(r, (list, tuple, set, frozenset, deque)):
            chain.append(f"{type_name(type(r))} of {len(r):,}")
            return None, r
        if isinstance(r, _SUSPENDED):
            return _suspended(r, obj), None
        if isinstance(r, types.CellType):
            return self._closure(r), None
        if isinstance(r, type):
            return type_name(r), None
        if isinstance(r, (types.FunctionType, types.MethodType)):
            return f"{getattr(r, '__module__', '?')}.{getattr(r, '__qualname__', '?')}", None
        attr = _attr(r, obj)
        name = type_name(type(r))
        where = f"{name}.{attr}" if attr else f"a {name}"
        if _stdlib(type(r)):  # asyncio.Queue._queue: say whose queue it is
            chain.append(where)
            return None, r
        return where, None

    def _closure(self, cell: types.CellType) -> str:
        for tup in self.referrers(cell):
            if isinstance(tup, tuple):
                for f in self.referrers(tup):
                    if isinstance(f, types.FunctionType) and f.__closure__ is tup:
                        var = f.__code__.co_freevars[tup.index(cell)]
                        return f"{f.__module__}.{f.__qualname__} (closure variable '{var}')"
        return "a closure"


def _stdlib(t: type) -> bool:
    module = getattr(t, "__module__", None)
    return isinstance(module, str) and module.split(".", 1)[0] in sys.stdlib_module_names \
        and module != "builtins" and module != "__main__"


def _fmt(owner: str, chain: list[str]) -> str:
    """``owner (outer → inner container)``; an owner's own detail joins the parenthesis."""
    if not chain:
        return owner
    inner = " → ".join(reversed(chain))
    if owner.endswith(")") and " (" in owner:
        return f"{owner[:-1]}, {inner})"
    return f"{owner} ({inner})"


def _unknown(chain: list[str]) -> str:
    return f"unknown ({' → '.join(reversed(chain))})" if chain else ""


def _key(d: dict, obj: Any) -> str:
    for k, v in list(d.items()):
        if v is obj or k is obj:
            text = k if isinstance(k, str) else repr(k)
            return text if len(text) <= 60 else text[:57] + "…"
    return "?"


def _class_dict(t: type, d: dict) -> bool:
    try:
        proxy = t.__dict__
        return len(proxy) == len(d) and all(proxy.get(k) is v for k, v in list(d.items())[:8])
    except Exception:
        return False


def _safe_dict(x: Any) -> Any:
    """``x.__dict__`` (which materialises a 3.11 instance's inline attributes: one small dict)."""
    try:
        return object.__getattribute__(x, "__dict__")
    except Exception:
        return None


def _attr(r: Any, obj: Any) -> str | None:
    """The attribute of ``r`` holding ``obj``: a slot or an instance attribute."""
    for cls in type(r).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for s in ([slots] if isinstance(slots, str) else slots):
            if s in ("__dict__", "__weakref__"):
                continue
            attr = f"_{cls.__name__.lstrip('_')}{s}" if s.startswith("__") and not s.endswith("__") else s
            try:
                if object.__getattribute__(r, attr) is obj:
                    return s
            except Exception:
                continue
    d = _safe_dict(r)
    if isinstance(d, dict):
        for k, v in list(d.items()):
            if v is obj:
                return str(k)
    return None


def _suspended(r: Any, obj: Any) -> str:
    frame = getattr(r, "cr_frame", None) or getattr(r, "gi_frame", None) or getattr(r, "ag_frame", None)
    module = frame.f_globals.get("__name__", "?") if frame is not None else "?"
    var = None
    if frame is not None:
        var = next((k for k, v in list(frame.f_locals.items()) if v is obj), None)
    kind = type(r).__name__
    return f"{module}.{r.__qualname__} ({kind} local '{var}')" if var else f"{module}.{r.__qualname__} ({kind})"


# -- where it was allocated ---------------------------------------------------------------

def allocated_at(obj: Any) -> str | None:
    """``package/module.py:12 in fn``: where an object was made (the constructor's caller),
    when it was allocated while tracemalloc traced."""
    if obj is None:
        return None
    tb = tracemalloc.get_object_traceback(obj)
    if tb is not None and len(tb):
        frames: Any = tuple((f.filename, f.lineno) for f in reversed(tb))  # the most recent first
    else:
        frames = _managed_dict_traceback(obj)
    return site(*maker(frames)) if frames else None


_CONSTRUCTORS = frozenset({"__new__", "__init__", "__post_init__", "_make"})


def maker(frames: tuple[tuple[str, int], ...]) -> tuple[str, int]:
    """The most recent frame that is not a constructor (``Envelope.__new__``, a dataclass's
    generated ``__init__``): who made the object, not how."""
    for filename, lineno in frames:
        if filename.startswith("<"):
            continue
        fn = function_at(filename, lineno)
        if fn is None or fn.rsplit(".", 1)[-1] not in _CONSTRUCTORS:
            return filename, lineno
    return frames[0]


_GET_TRACEBACK: Any = None


def _managed_dict_traceback(obj: Any) -> tuple[tuple[str, int], ...] | None:
    """CPython 3.11's ``get_object_traceback`` misses instances of classes with a managed
    ``__dict__`` (most classes): it looks before the GC header only, not the two dict pointers
    before it. Ask tracemalloc for the block where it really starts."""
    global _GET_TRACEBACK
    flags = getattr(type(obj), "__flags__", 0)
    if sys.version_info[:2] != (3, 11) or not flags & (1 << 4):  # Py_TPFLAGS_MANAGED_DICT
        return None
    try:
        if _GET_TRACEBACK is None:
            import ctypes
            fn = ctypes.pythonapi._PyTraceMalloc_GetTraceback
            fn.restype, fn.argtypes = ctypes.py_object, [ctypes.c_uint, ctypes.c_size_t]
            _GET_TRACEBACK = (fn, ctypes.sizeof(ctypes.c_void_p))
        fn, word = _GET_TRACEBACK
        gc_head = 2 * word if flags & (1 << 14) else 0  # Py_TPFLAGS_HAVE_GC
        frames = fn(0, id(obj) - gc_head - 2 * word)
    except Exception:
        return None
    return tuple((str(f), int(n)) for f, n in frames) if frames else None  # the most recent first


def top_sites(snapshot: tracemalloc.Snapshot) -> tuple[tuple[str, int, int], ...]:
    """Retained allocations (since ``start``) by line, busmon's own files and the runtime's left out."""
    raw = getattr(snapshot.traces, "_traces", None)  # (domain, size, frames, total): 10× faster than statistics()
    if isinstance(raw, list) and (not raw or (isinstance(raw[0], tuple) and len(raw[0]) >= 3)):
        # by traceback first, allocating nothing per trace: while tracing, every new int costs
        by_traceback: dict[tuple[tuple[str, int], ...], list[int]] = {}
        for trace in raw:
            sizes = by_traceback.get(trace[2])
            if sizes is None:
                by_traceback[trace[2]] = [trace[1]]
            else:
                sizes.append(trace[1])
        acc: dict[tuple[str, int], list[int]] = {}
        for frames, sizes in by_traceback.items():
            e = acc.setdefault(maker(frames), [0, 0])
            e[0] += sum(sizes)
            e[1] += len(sizes)
        stats = sorted(((frame, n, k) for frame, (n, k) in acc.items()), key=lambda x: -x[1])
    else:
        stats = [((st.traceback[-1].filename, st.traceback[-1].lineno), st.size, st.count)
                 for st in snapshot.statistics("lineno")]
    out: list[tuple[str, int, int]] = []
    for (filename, lineno), n, k in stats:
        short = short_path(filename)
        if own_file(filename) or short.startswith("<") or short == "tracemalloc.py":
            continue
        out.append((site(filename, lineno), n, k))
        if len(out) >= TOP_SITES:
            break
    return tuple(out)


_OWN_DIRS: tuple[str, ...] | None = None


def own_file(filename: str) -> bool:
    """A file of busmon (``probes/``, ``tui/``) or its UI (``textual/``, ``rich/``), wherever
    they are installed."""
    global _OWN_DIRS
    if _OWN_DIRS is None:
        import importlib.util
        here = os.path.dirname(os.path.abspath(__file__))
        dirs = [here + os.sep, os.path.join(os.path.dirname(here), "tui") + os.sep]
        for name in ("textual", "rich"):
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                spec = None
            for d in (spec.submodule_search_locations or []) if spec is not None else []:
                dirs.append(os.path.abspath(d) + os.sep)
        _OWN_DIRS = tuple(dirs)
    return os.path.abspath(filename).startswith(_OWN_DIRS)


_SHORT: dict[str, str] = {}


def short_path(filename: str) -> str:
    """The path below the longest ``sys.path`` entry: ``tests/test_x.py``, ``aiokafka/conn.py``."""
    got = _SHORT.get(filename)
    if got is None:
        path = filename.replace("\\", "/")
        best = ""
        for p in sys.path:
            p = (p or "").replace("\\", "/").rstrip("/")
            if p and path.startswith(p + "/") and len(p) > len(best):
                best = p
        if best:
            got = path[len(best) + 1:]
        else:
            parts = path.split("/")
            for marker in ("site-packages", "dist-packages"):
                if marker in parts:
                    got = "/".join(parts[parts.index(marker) + 1:])
                    break
            else:
                cwd = os.getcwd().replace("\\", "/").rstrip("/") + "/"
                got = path[len(cwd):] if path.startswith(cwd) else "/".join(parts[-2:])
        _SHORT[filename] = got
    return got


def site(filename: str, lineno: int) -> str:
    fn = function_at(filename, lineno)
    where = f"{short_path(filename)}:{lineno}"
    return f"{where} in {fn}" if fn else where


_LINES: dict[str, dict[int, str]] = {}


def function_at(filename: str, lineno: int) -> str | None:
    """The innermost function of a loaded module whose code has ``lineno`` (tracemalloc gives
    only file and line)."""
    lines = _LINES.get(filename)
    if lines is None:
        lines = _LINES[filename] = {}
        innermost: dict[int, int] = {}
        for code in _codes_of(filename):
            first = code.co_firstlineno
            for _, _, line in code.co_lines():
                if line is not None and first >= innermost.get(line, -1):
                    innermost[line] = first
                    lines[line] = code.co_qualname
    return lines.get(lineno)


def _codes_of(filename: str) -> list[types.CodeType]:
    target = os.path.abspath(filename)
    module = None
    for m in list(sys.modules.values()):
        f = getattr(m, "__file__", None)
        if isinstance(f, str) and os.path.abspath(f) == target:
            module = m
            break
    if module is None:
        return []
    codes: list[types.CodeType] = []
    seen: set[int] = set()

    def add_code(code: types.CodeType) -> None:
        if id(code) in seen or code.co_filename != filename:
            return
        seen.add(id(code))
        codes.append(code)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                add_code(const)

    def add(value: Any, depth: int) -> None:
        value = getattr(value, "__func__", value)  # staticmethod, classmethod, bound method
        if isinstance(value, property):
            for f in (value.fget, value.fset, value.fdel):
                if f is not None:
                    add(f, depth)
        elif isinstance(value, types.FunctionType):
            add_code(value.__code__)
        elif isinstance(value, type) and depth < 4 and id(value) not in seen \
                and getattr(value, "__module__", None) == module.__name__:
            seen.add(id(value))
            for v in list(vars(value).values()):
                add(v, depth + 1)

    for v in list(vars(module).values()):
        add(v, 0)
    return codes
