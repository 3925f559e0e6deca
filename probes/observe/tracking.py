"""Live task counts per component, kept incrementally by a task factory.

A full scan of 10,000 tasks costs milliseconds; sampling at 10 Hz must stay
cheap. So the factory notes each new task, the sampler classifies only the
tasks created since the last sample, and a done-callback takes finished ones
off the count. Full identity scans happen only at phase boundaries (census.py).
With ``trace_creation`` the factory also records where each task was created.
"""

from __future__ import annotations

import asyncio
import collections
import operator
import sys
import time
import weakref
from collections import Counter
from types import FrameType
from typing import Any, Callable, Iterable, NamedTuple

from busmon.bus.deadline import short_where
from busmon.probes.observe.components import task_component

#: destroyed tasks kept for the verdict, at most
MAX_DESTROYED = 10_000
#: tasks waiting to be classified before the finished ones among them are forgotten
FRESH_COMPACT_AT = 10_000
_COMPONENT = operator.itemgetter(2)  # a live entry's component (None until classified)
_CREATE_TASK_CODES = (asyncio.BaseEventLoop.create_task.__code__, asyncio.tasks.create_task.__code__)
_SKIP_FILES = ("asyncio/", "asyncio\\", __file__)  # asyncio's machinery, and this module's hooks


def creating_module(depth: int = 2) -> str | None:
    """The module of the first caller outside asyncio: who asked for this task. A task the loop
    itself starts from one of its own callbacks (the async generator finalizer's ``aclose()``)
    is asyncio's: whoever happens to be running the loop (busmon, settling) did not ask for it."""
    frame = sys._getframe(depth)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.split(".")[0] != "asyncio" and module != __name__:
            return module
        if frame.f_code is _RUN_ONCE:
            return "asyncio"
        frame = frame.f_back
    return None


_RUN_ONCE = asyncio.BaseEventLoop._run_once.__code__


#: helpers that only wrap ``loop.create_task`` (aiokafka's ``util.create_task``, a bus's
#: ``spawn``): the frame that decided to start the task is the one that called them
WRAPPER_FUNCTIONS = frozenset({"create_task", "ensure_future", "spawn", "start_soon", "_create_task",
                               "create_background_task", "run_coroutine_threadsafe"})


def first_frame(frame: FrameType | None, skip: Callable[[FrameType], bool]) -> FrameType | None:
    """From ``frame`` outwards, the first frame ``skip`` does not pass over: the first one
    outside a library's own machinery (asyncio's for a task, threading's for a thread)."""
    while frame is not None and skip(frame):
        frame = frame.f_back
    return frame


def where(frame: FrameType | None) -> str | None:
    """``package/module.py:line in function``."""
    return short_where(frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name) if frame else None


def _task_machinery(frame: FrameType) -> bool:
    return (any(s in frame.f_code.co_filename for s in _SKIP_FILES)
            or frame.f_code.co_name in WRAPPER_FUNCTIONS)


def creation_site(depth: int = 2) -> str | None:
    """``package/module.py:line in function`` of the first caller outside asyncio itself and
    outside helpers that only wrap create_task: who decided to start this task."""
    return where(first_frame(sys._getframe(depth), _task_machinery))


class DestroyedTask(NamedTuple):
    """A task the GC collected while it was still pending: nothing referenced it."""

    at: float                 # time.monotonic() when it was collected
    name: str
    qualname: str
    site: str | None          # where it was created (with creation tracing)
    ident: int                # id() of the task object, to tell it from a settle candidate
    creator: str | None       # the module that created it


class TaskTracker:
    """Installed as the arena loop's task factory. Holds tasks only weakly: a task the bus
    abandoned must be collectable with the probes on exactly as with them off (no observer
    effect), so a pending task that nothing references is destroyed, and seen to be
    (``destroyed``: asyncio's "Task was destroyed but it is pending!", as a finding)."""

    def __init__(self, trace_creation: bool = False) -> None:
        self.trace_creation = trace_creation
        self.created = 0
        self.finished = 0
        # every live task, weakly: [name, coroutine qualname, component once classified, site]
        self._live: dict[weakref.ref[asyncio.Task], list[Any]] = {}
        self._fresh: list[weakref.ref[asyncio.Task]] = []
        self._counts: Counter[str] = Counter()
        self.sites: weakref.WeakKeyDictionary[asyncio.Task, str] = weakref.WeakKeyDictionary()
        # who created each task not yet classified: cheap (one frame walk), and only needed
        # until the task is classified, so it is dropped then
        self._creators: weakref.WeakKeyDictionary[asyncio.Task, str | None] = weakref.WeakKeyDictionary()
        #: pending tasks the GC collected, in order (the last MAX_DESTROYED: a program watched
        #: for hours that abandons tasks all along must not make this grow without end)
        self.destroyed: collections.deque[DestroyedTask] = collections.deque(maxlen=MAX_DESTROYED)
        self._fresh_limit = FRESH_COMPACT_AT
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None

    def install(self, loop: asyncio.AbstractEventLoop, count_existing: bool = True) -> None:
        """Become ``loop``'s task factory; tasks already alive are counted once, by a scan.

        ``count_existing=False`` on a loop busmon only visits (a test's, for a while): the live
        counts are not wanted there, and a done-callback per long-lived task per visit would
        pile up on tasks that outlive many visits."""
        self._loop = loop
        self._previous = loop.get_task_factory()
        loop.set_task_factory(self._factory)
        if count_existing:
            for task in asyncio.all_tasks(loop):
                self._watch(task, None)

    @property
    def installed(self) -> bool:
        return self._loop is not None

    def uninstall(self) -> None:
        """Put the loop's task factory back and stop watching: the done-callbacks come off the
        tasks still alive and what was known of them is dropped (so a task collected later is
        nobody's finding). Left on, each would cost a loop callback when the task ends: 100,000
        of them when the arena's teardown cancels 100,000 idle tasks."""
        if self._loop is not None and self._loop.get_task_factory() == self._factory:
            self._loop.set_task_factory(self._previous)
        self._loop = None
        for ref in list(self._live):
            task = ref()
            if task is not None:
                task.remove_done_callback(self._done)
        self._live.clear()
        self._fresh.clear()
        self._counts.clear()
        self._creators.clear()

    def _factory(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task:
        if self._previous is not None:
            task = self._previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        self.created += 1
        creator = self._creators[task] = creating_module(2)
        site = creation_site(2) if self.trace_creation else None
        if site is not None:
            self.sites[task] = site
        self._watch(task, site, creator)
        # create_task(name=…) names the task after this returns: note the name now, so a task
        # the GC takes before the next sample is still called by its name
        frame: Any = sys._getframe(1)
        for _ in range(2):  # loop.create_task(name=…), or asyncio.create_task(name=…) above it
            if frame is None or frame.f_code not in _CREATE_TASK_CODES:
                break
            if (name := frame.f_locals.get("name")) is not None:
                self._live[weakref.ref(task)][0] = str(name)
                break
            frame = frame.f_back
        return task

    def _watch(self, task: asyncio.Task, site: str | None, creator: str | None = None) -> None:
        ref = weakref.ref(task, self._collected)
        coro = task.get_coro()
        self._live[ref] = [task.get_name(), getattr(coro, "__qualname__", type(coro).__name__), None, site,
                           id(task), creator]
        self._fresh.append(ref)
        task.add_done_callback(self._done)
        if len(self._fresh) > self._fresh_limit:
            self._compact_fresh()

    def _compact_fresh(self) -> None:
        """Nobody asks for the counts (``busmon run`` with no dashboard attached): forget the
        tasks that finished meanwhile, so what waits to be classified stays as large as what
        is alive, not as what was ever created."""
        self._fresh = [r for r in self._fresh if r in self._live]
        self._fresh_limit = max(FRESH_COMPACT_AT, 2 * len(self._fresh))

    def _uncount(self, entry: list[Any]) -> None:
        component = entry[2]
        if component is not None:
            self._counts[component] -= 1
            if not self._counts[component]:
                del self._counts[component]

    def _done(self, task: asyncio.Task) -> None:
        self.finished += 1
        self._creators.pop(task, None)
        entry = self._live.pop(weakref.ref(task), None)
        if entry is not None:
            self._uncount(entry)

    def _collected(self, ref: weakref.ref) -> None:
        """The GC took a task that never finished (a finished one left ``_live`` when it did)."""
        entry = self._live.pop(ref, None)
        if entry is not None:
            self._uncount(entry)
            name, qualname, _, site, ident, creator = entry
            self.destroyed.append(DestroyedTask(time.monotonic(), name, qualname, site, ident, creator))

    def counts(self) -> dict[str, int]:
        """Live tasks per component, classifying only the tasks created since the last call."""
        if self._fresh:
            fresh, self._fresh = self._fresh, []
            for ref in fresh:
                task, entry = ref(), self._live.get(ref)
                if task is None or entry is None:
                    continue
                created_by = self._creators.pop(task, None)
                entry[0] = task.get_name()  # create_task(name=…) names it after the factory returns
                if task.done() or entry[2] is not None:
                    continue
                entry[2] = task_component(task, entry[3], created_by)
                self._counts[entry[2]] += 1
        return dict(self._counts)

    def count_components(self, refs: Iterable[weakref.ref[asyncio.Task]]) -> tuple[int, dict[str, int]]:
        """How many of the tasks ``refs`` point to are alive, and how many per component: what
        ``component_of`` says of each, without a call per task (a phase snapshot's census holds
        every task on the loop: with 100,000 idle ones, a snapshot less its census took ~90 ms
        asking task by task, ~50 ms so; bench/scaling.py)."""
        refs = list(refs)
        # a census's weak reference finds the tracker's entry for the same task (weak references
        # to a live object hash and compare as the object does)
        entries = list(map(self._live.get, refs))
        counts: Counter[Any] = Counter(map(_COMPONENT, filter(None, entries)))  # at C speed
        unknown = counts.pop(None, 0)
        alive = len(entries) - entries.count(None) - unknown
        if alive < len(entries):
            # not classified, or no longer (or never) the tracker's: asked one by one, as
            # component_of does; a reference whose task is gone counts for nothing
            for ref, entry in zip(refs, entries):
                if entry is None or entry[2] is None:
                    task = ref()
                    if task is not None:
                        counts[self.component_of(task)] += 1
                        alive += 1
        return alive, dict(counts)

    def component_of(self, task: asyncio.Task) -> str:
        """The task's component, from the cache when the tracker has classified it."""
        entry = self._live.get(weakref.ref(task))
        if entry is not None and entry[2] is not None:
            return entry[2]
        return task_component(task, self.sites.get(task), self._creators.get(task))
