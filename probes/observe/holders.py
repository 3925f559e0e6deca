"""Who holds a retained object: ``gc.get_referrers`` walked up from it, a few levels, to a
named owner.

``tests.leaky_buses.Hoarder.sent (list of 2,000)``, ``module x.y: CACHE (dict of 2,000)``,
``x.y.Bus.CACHE (class attribute, list of 500)``, ``x.y.fn (closure variable 'kept', …)``,
``x.y.Worker.run (coroutine local 'buf', …)``. For an untracked row the walk starts from the
largest collection holding it (the GC cannot see an untracked holder). While the baseline is
frozen, only run-created holders are in sight: ``get_referrers`` does not search the frozen
generation, so an older holder is named only after the unfreeze.
"""

from __future__ import annotations

import gc
import sys
import types
from collections import deque
from typing import Any

from busmon.probes.observe.heap_census import own_type, type_name

#: how far up ``held_by`` looks for a named owner
HOLDER_LEVELS = 6

_SUSPENDED = (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType)


class Holders:
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


def unknown_holder(chain: list[str]) -> str:
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
