"""Timers left on the event loop: callbacks a bus scheduled that have not fired yet.

A bus whose close leaves ``loop.call_later(0.3, restart)`` behind starts something after
close returned; goleak would not see it, and the next run would be blamed. These helpers
list such timers (by identity) and say whose they are.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from busmon.probes.observe.components import BUSMON_PACKAGES, package_of

#: whose timers are machinery, by :func:`package_of`: asyncio's, busmon's own and its UI's
_OWN_MODULES = frozenset({"asyncio", "textual", "rich", "concurrent", *BUSMON_PACKAGES})


def bus_timers(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    """Timers scheduled on ``loop`` by anyone but asyncio's own machinery and busmon.

    asyncio keeps them in a private heap (``loop._scheduled``); there is no public way to list
    them. Sleeps, wait timeouts and ``asyncio.timeout`` are asyncio's: the task behind them is a
    candidate already.
    """
    out = []
    for handle in getattr(loop, "_scheduled", ()):
        if handle.cancelled():
            continue
        if package_of(callback_module(handle)) in _OWN_MODULES:
            continue
        out.append(handle)
    return out


def _callback(handle: asyncio.Handle) -> Any:
    cb = getattr(handle, "_callback", None)
    while isinstance(cb, functools.partial):
        cb = cb.func
    return cb


def callback_module(handle: asyncio.Handle) -> str:
    cb = _callback(handle)
    module = getattr(cb, "__module__", None)
    if module is None and hasattr(cb, "__self__"):
        module = type(cb.__self__).__module__
    return module or ""


def callback_name(handle: asyncio.Handle) -> str:
    cb = _callback(handle)
    return getattr(cb, "__qualname__", None) or type(cb).__name__


def callback_component(handle: asyncio.Handle) -> str:
    module = callback_module(handle)
    return module.split(".")[0] if module else "unknown"
