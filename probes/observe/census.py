"""Full identity scans of tasks and threads, taken at phase boundaries.

Verdicts compare *which* objects are alive with the baseline, never how many:
a new task replacing an old one is a change even though the count is equal.
Tasks are held weakly (a census must not keep anything alive); Thread objects
are held strongly (that does not keep a thread running) and native threads are
known by their OS thread id.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import Iterable

import psutil

from busmon.probes.observe import children as _children
from busmon.probes.observe import fds as _fds
from busmon.probes.observe.components import task_component, thread_component
from busmon.probes.observe.timers import bus_timers

_PROCESS = psutil.Process(os.getpid())
#: where Linux lists this process's threads, one directory per thread id
_TASK_DIR = "/proc/self/task"
_HAS_TASK_DIR = os.path.isdir(_TASK_DIR)


def os_thread_ids() -> set[int] | None:
    """Every OS thread of this process, Python's and native ones alike; None when the OS will
    not say (then nothing can be judged exited or alive by it).

    On Linux the ids are the names in ``/proc/self/task``: psutil's ``threads()`` also opens and
    reads each thread's ``stat`` file (its CPU times), a file per thread at every look (settling
    looks every 10 ms): with 1,000 threads the verdict took ~50 ms that way, 11–15 ms with this
    and children.py's lighter reads (bench/scaling.py)."""
    if _HAS_TASK_DIR:
        try:
            return {int(tid) for tid in os.listdir(_TASK_DIR)}
        except (OSError, ValueError):
            pass
    try:
        return {t.id for t in _PROCESS.threads()}
    except (psutil.Error, OSError):
        return None


def os_thread_count() -> int:
    try:
        return _PROCESS.num_threads()
    except psutil.Error:
        return threading.active_count()


@dataclass
class Census:
    """Who is alive at one moment, by identity.

    Tasks are kept as weak references (``weakref.ref`` compares and hashes by its
    referent while that lives, and a dead one equals nothing new), so a census
    keeps no task alive and a freed task's address being reused by a new task
    can never pass for the old one.
    """

    task_refs: frozenset[weakref.ref] = frozenset()
    threads: set[threading.Thread] = field(default_factory=set)
    native_ids: set[int] = field(default_factory=set)
    timers: weakref.WeakSet = field(default_factory=weakref.WeakSet)  # timers a bus left scheduled
    #: open descriptors as (fd, what it points to): a reused number pointing elsewhere is new;
    #: None where the OS cannot list them
    fds: frozenset[tuple[int, str]] | None = None
    children: frozenset[tuple[int, float]] = frozenset()   # child processes: (pid, start time)

    @classmethod
    def take(cls, loop: asyncio.AbstractEventLoop | None = None) -> Census:
        """Everyone alive now; the tasks and timers of ``loop`` (by default the running loop's;
        with no loop given and none running, there are none: code that is not asyncio)."""
        loop = loop or running_loop()
        refs = frozenset(map(weakref.ref, asyncio.all_tasks(loop))) if loop is not None else frozenset()
        timers = weakref.WeakSet(bus_timers(loop)) if loop is not None else weakref.WeakSet()
        threads = {t for t in threading.enumerate() if t.is_alive()}
        table = _fds.fd_table()
        fds = None if table is None else frozenset(_fds.identities(table))
        return cls(refs, threads, os_thread_ids() or set(), timers, fds, frozenset(_children.children()))

    def new_sockets(self, baseline: Census) -> int:
        """Sockets open here that the baseline did not have (by identity)."""
        if self.fds is None or baseline.fds is None:
            return 0
        return _fds.new_sockets(self.fds, baseline.fds)

    @property
    def tasks(self) -> list[asyncio.Task]:
        """The tasks of this census that are still alive."""
        return [t for t in map(_deref, self.task_refs) if t is not None]

    def has_task(self, task: asyncio.Task) -> bool:
        return weakref.ref(task) in self.task_refs

    def new_since(self, baseline: Census) -> tuple[list[asyncio.Task], list[threading.Thread], list[int]]:
        """Tasks, Python threads and native-only thread ids here that the baseline lacked."""
        base = baseline.task_refs
        tasks = [t for t in map(_deref, self.task_refs - base) if t is not None]
        threads = [t for t in self.threads if t not in baseline.threads]
        python_native = {t.native_id for t in self.threads}
        native = sorted(n for n in self.native_ids - baseline.native_ids if n not in python_native)
        return tasks, threads, native


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None (plain synchronous code)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _deref(ref: weakref.ref) -> asyncio.Task | None:
    return ref()


def components_of_tasks(tasks: Iterable[asyncio.Task], component_of=task_component) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tasks:
        c = component_of(t)
        out[c] = out.get(c, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))


def components_of_threads(threads: Iterable[threading.Thread]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in threads:
        c = "thread:" + thread_component(t)
        out[c] = out.get(c, 0) + 1
    return out
