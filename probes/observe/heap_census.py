"""Census of the heap: what the run created and is still alive, counted by type, busmon's own
left out.

The runner freezes everything alive at the baseline (``gc.collect(); gc.freeze()``), so until
settle unfreezes, ``gc.get_objects()`` lists only GC-tracked objects the run created (plus the
few older containers that became tracked during the run, e.g. a module's empty dict that got
its first tracked value). Checked on CPython 3.11: frozen objects sit in the permanent
generation, which neither ``gc.get_objects()`` nor ``gc.get_referrers()`` searches. When
nothing is frozen at the retained-memory probe's ``start()``, the ids alive then are remembered
instead (``base_ids``).

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
  payloads, keys and numbers only they hold (one finding, not four).

Limitation: untracked objects added to a container older than the run (a module-level list of
``bytes`` made at import) are not found: nothing the run created refers to them (``top_sites``
shows them when tracing).
"""

from __future__ import annotations

import asyncio
import gc
import operator
import sys
import threading
import time
import types
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from itertools import compress, filterfalse, repeat
from operator import not_
from typing import Any, Iterable

from busmon.probes.observe.components import BUSMON_PACKAGES, package_of

#: a collection with fewer items folds them into its owner's row; a larger one makes them rows
FOLD_ITEMS = 32
#: how many objects older than the run the exclusion walk may pass through in a row
OUTSIDE_HOPS = 4
#: busmon's own packages and its UI's (by :func:`package_of`): their objects are never judged
OWN_MODULES = (*BUSMON_PACKAGES, "textual", "rich")
#: the measuring side's own package (``busmon.probes``)
_PROBES = package_of(__name__)

# Counter() asks isinstance(arg, Mapping): the ABC caches it answers from grow (weakrefs, sets)
# the first time; let that happen now, not as a run's objects
Counter([])

_COLLECTIONS = (list, dict, set, frozenset, deque)
#: builtin collections (and plain tuples) that fold into the one record holding them
_FOLDABLE = frozenset({list, dict, set, frozenset, deque, tuple})
#: what the exclusion walk never passes through: they lead to everything, the bus included
_BLOCKED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
            types.CodeType, types.FrameType, types.CellType, types.GeneratorType, types.CoroutineType,
            types.AsyncGeneratorType, asyncio.Future, asyncio.AbstractEventLoop, asyncio.Handle,
            threading.Thread)


def type_name(t: type) -> str:
    """``module.QualName``; a builtin's bare name."""
    module = getattr(t, "__module__", None) or "?"
    qual = getattr(t, "__qualname__", None) or getattr(t, "__name__", "?")
    return qual if module == "builtins" else f"{module}.{qual}"


def own_type(t: type) -> bool:
    """A type defined in busmon (``busmon.probes``, ``busmon.tui``) or its UI (``textual``,
    ``rich``); the embedded bus's (``busmon.bus``) are the bus under test's."""
    module = getattr(t, "__module__", None) or ""
    return isinstance(module, str) and package_of(module) in OWN_MODULES


@dataclass
class Census:
    """Rows of what the run created by type name: counts, and with ``full`` sizes, a sample and
    (untracked rows) the largest collection holding them; the ids left out as busmon's own."""

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


def take_census(roots: list[Any], base_ids: set[int] | None, *, full: bool, protect: Iterable[object] = (),
                extra: Iterable[object] = ()) -> Census:
    """Rows of what the run created, busmon's own left out (see the module's docstring).

    ``base_ids``: the ids alive at the baseline when nothing was frozen then; ``extra``: the
    caller's own lists, never counted; ``full``: sizes and samples too, not only counts."""
    # no comprehension, lambda or closure in here may use a local: its cell would be made at
    # entry, before gc.get_objects(), and be counted
    objs = gc.get_objects()
    run_ids = set(map(id, objs))
    if base_ids is not None:
        run_ids -= base_ids
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


def _rows(box: list[list[Any]], run_ids: set[int], excluded: set[int], full: bool) -> Census:
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
    return Census(counts, sizes, samples, excluded, by_name)


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
                        2 if own_type(t) and package_of(t.__module__) == _PROBES else 0
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
