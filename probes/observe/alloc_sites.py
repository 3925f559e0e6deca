"""Where retained memory was allocated: tracemalloc, from the retained-memory probe's baseline.

``allocated_at`` is the frame that made an object (its constructor's caller: ``maker`` steps out
of ``__new__``/``__init__``), ``top_sites`` the lines holding the most memory allocated since the
baseline, busmon's and its UI's files left out (``own_file``). Sites read
``package/module.py:12 in fn`` (``short_path``, ``function_at``).
"""

from __future__ import annotations

import os
import sys
import tracemalloc
import types
from typing import Any

TOP_SITES = 10
#: frames tracemalloc keeps per allocation: enough to step out of the constructors
TRACE_FRAMES = 4


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
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # busmon.probes
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
