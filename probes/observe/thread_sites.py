"""Where each thread was started, noted while a watch with ``trace_creation`` runs.

``threading.Thread.start`` is wrapped only while such a watch is on (a count: watches may
overlap), and put back after the last one, unless someone wrapped it over busmon's meanwhile:
then busmon's stays beneath theirs and only passes calls on. The wrapper notes one string per
thread (a weak mapping: a thread object dies as it would have) and never fails a start.

The site is the line that called ``Thread.start()``. When that line is a library's (an installed
package or the standard library: ThreadPoolExecutor, trio's thread cache), it also names, as for
tasks, the first frame outside the libraries: the code that made the library start the thread;
when every caller is a library's (trio's guest-mode I/O thread, started from anyio's test
runner), the first frame outside the file that started the thread.
"""

from __future__ import annotations

import sys
import sysconfig
import threading
import weakref
from types import FrameType
from typing import Any, Callable

from busmon.probes.observe.tracking import first_frame, where

_SITES: weakref.WeakKeyDictionary[threading.Thread, str] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_active = 0
_previous: Callable[..., Any] = threading.Thread.start   # what busmon's wrapper calls on
_in_chain = False    # busmon's wrapper is Thread.start, or beneath someone else's wrapper
_LIBRARY_DIRS = tuple({sysconfig.get_paths()[k].replace("\\", "/").rstrip("/") + "/"
                       for k in ("stdlib", "platstdlib")})


def _start(self: threading.Thread, *args: Any, **kwargs: Any) -> Any:
    if _active:
        try:
            _SITES[self] = start_site(self, sys._getframe(1))
        except Exception:  # noqa: BLE001 - noting a site must never break someone's thread
            pass
    return _previous(self, *args, **kwargs)


def install() -> None:
    """Note where threads are started from now on (until the matching :func:`uninstall`)."""
    global _active, _previous, _in_chain
    with _lock:
        if not _in_chain:
            _previous = threading.Thread.start
            threading.Thread.start = _start  # type: ignore[method-assign]
            _in_chain = True
        _active += 1


def uninstall() -> None:
    """Stop noting; the last watch puts ``Thread.start`` back (``_previous`` stays: a thread
    in the middle of ``start()`` in another thread still goes through the wrapper)."""
    global _active, _in_chain
    with _lock:
        _active = max(0, _active - 1)
        if not _active and threading.Thread.start is _start:
            threading.Thread.start = _previous  # type: ignore[method-assign]
            _in_chain = False
        # else: someone wrapped Thread.start over busmon's: it stays beneath, passing calls on


def site(thread: threading.Thread) -> str | None:
    """Where ``thread`` was started (None: not noted)."""
    return _SITES.get(thread)


def _path(frame: FrameType) -> str:
    return frame.f_code.co_filename.replace("\\", "/")


def is_library(frame: FrameType) -> bool:
    """An installed package's frame or the standard library's: not the code under test."""
    path = _path(frame)
    return ("/site-packages/" in path or "/dist-packages/" in path or path.startswith(_LIBRARY_DIRS)
            or path.startswith("<frozen "))   # the standard library's frozen modules (runpy)


def _busmons(frame: FrameType) -> bool:
    """busmon's own machinery (a socket probe's wrapper around ``getaddrinfo``): never the code
    that asked for the thread."""
    return str(frame.f_globals.get("__name__", "")).startswith(("busmon.probes.", "busmon.tui."))


def start_site(thread: threading.Thread, frame: FrameType | None) -> str | None:
    """``X`` (the line that called ``start()``), or ``X from Y`` for a library's thread."""
    def starting(f: FrameType) -> bool:  # threading's own frames, a subclass's start() override
        return _path(f).endswith("/threading.py") or (f.f_code.co_name == "start" and f.f_locals.get("self") is thread)

    caller = first_frame(frame, starting)
    if caller is None or not is_library(caller):
        return where(caller)
    path = _path(caller)
    outside = (first_frame(caller, lambda f: is_library(f) or _busmons(f))
               or first_frame(caller, lambda f: _path(f) == path))
    return f"{where(caller)} from {where(outside)}" if outside is not None else where(caller)
