"""The OS thread ids of the Python threads started while a watch runs.

A thread that ``join()`` has returned for still has its OS thread for a moment (the lock
``join`` waits on is released just before the OS thread ends). Seen through psutil right then,
it is an OS thread with no Python thread object: a "native" thread that appeared and exited.
Knowing which OS threads Python itself started tells it apart from a native library's.

``threading.setprofile`` installs a hook that each thread started afterwards runs once, at its
start, in that thread: it notes the thread's native id and removes itself, so the thread runs
unprofiled from then on. When someone else's profile hook is set, nothing is installed.

It also notes, at the baseline, which runtime pool threads (asyncio's executor, anyio's and
trio's workers) are idle: one of those found running a job later runs a job submitted since, so
it is a candidate like a new thread, although it was alive at the baseline.

With ``trace_starts`` (a watch's ``trace_creation``) it also has :mod:`busmon.probes.observe.thread_sites` note
where each thread is started, until uninstalled.
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import Any

from busmon.probes.observe import thread_sites
from busmon.probes.observe.census import os_thread_ids
from busmon.probes.observe.runtime_pools import machinery_reason, runtime_pool


#: Python threads' native ids noted before the ended ones among them are forgotten
PRUNE_AT = 4096


class ThreadBirths:
    def __init__(self) -> None:
        self.native_ids: set[int] = set()
        self._prune_at = PRUNE_AT
        self._installed = False
        self._sites = False
        #: the runtime pool threads idle at the baseline (weakly: one may exit meanwhile)
        self.idle_pool: weakref.WeakSet[threading.Thread] = weakref.WeakSet()

    def install(self, trace_starts: bool = False) -> bool:
        """Start noting (False when another profile hook is in place: it is left alone; the
        start sites are noted all the same)."""
        if trace_starts and not self._sites:
            thread_sites.install()
            self._sites = True
        self.idle_pool = weakref.WeakSet(
            t for t in threading.enumerate() if (pool := runtime_pool(t)) and machinery_reason(t, pool))
        if threading.getprofile() is not None:
            return False
        threading.setprofile(self._born)
        self._installed = True
        return True

    def uninstall(self) -> None:
        if self._sites:
            thread_sites.uninstall()
            self._sites = False
        if self._installed and threading.getprofile() == self._born:
            threading.setprofile(None)
        self._installed = False

    def _born(self, frame: Any, event: str, arg: Any) -> None:
        self.native_ids.add(threading.get_native_id())   # a set's add is atomic under the GIL
        sys.setprofile(None)
        if len(self.native_ids) > self._prune_at:  # a program that starts threads all along
            self._prune()

    def _prune(self) -> None:
        """Forget the ids of threads that have ended (the OS's list says which are alive)."""
        alive = os_thread_ids()
        if alive is not None:
            self.native_ids = self.native_ids & alive  # a new set: a verdict may be reading the old
        self._prune_at = max(PRUNE_AT, 2 * len(self.native_ids))
