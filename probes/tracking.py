"""Live task counts per component, kept incrementally by a task factory.

A full scan of 10,000 tasks costs milliseconds; sampling at 10 Hz must stay
cheap. So the factory notes each new task, the sampler classifies only the
tasks created since the last sample, and a done-callback takes finished ones
off the count. Full identity scans happen only at phase boundaries (census.py).
With ``trace_creation`` the factory also records where each task was created.
"""

from __future__ import annotations

import asyncio
import sys
import weakref
from collections import Counter
from typing import Any

from probes.components import task_component

_SKIP_FILES = ("asyncio/", "asyncio\\", "probes/tracking.py", "probes\\tracking.py")


def creating_module(depth: int = 2) -> str | None:
    """The module of the first caller outside asyncio: who asked for this task."""
    frame = sys._getframe(depth)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.split(".")[0] != "asyncio" and module != __name__:
            return module
        frame = frame.f_back
    return None


def creation_site(depth: int = 2) -> str | None:
    """``file:line in function`` of the first caller outside asyncio itself."""
    frame = sys._getframe(depth)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not any(s in filename for s in _SKIP_FILES):
            short = "/".join(filename.replace("\\", "/").split("/")[-2:])
            return f"{short}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back
    return None


class TaskTracker:
    """Installed as the arena loop's task factory. Holds tasks only weakly: a task the bus
    abandoned must be collectable with the probes on exactly as with them off (no observer
    effect), so a pending task that nothing references is destroyed, and seen to be."""

    def __init__(self, trace_creation: bool = False) -> None:
        self.trace_creation = trace_creation
        self.created = 0
        self.finished = 0
        self._fresh: list[weakref.ref[asyncio.Task]] = []
        # classified live tasks: weak key → component; a collected task leaves the counts too
        self._component: dict[weakref.ref[asyncio.Task], str] = {}
        self._counts: Counter[str] = Counter()
        self.sites: weakref.WeakKeyDictionary[asyncio.Task, str] = weakref.WeakKeyDictionary()
        # who created each task not yet classified: cheap (one frame walk), and only needed
        # until the task is classified, so it is dropped then
        self._creators: weakref.WeakKeyDictionary[asyncio.Task, str | None] = weakref.WeakKeyDictionary()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Become ``loop``'s task factory; tasks already alive are counted once, by a scan."""
        self._loop = loop
        self._previous = loop.get_task_factory()
        loop.set_task_factory(self._factory)
        for task in asyncio.all_tasks(loop):
            self._fresh.append(weakref.ref(task))
            task.add_done_callback(self._done)

    @property
    def installed(self) -> bool:
        return self._loop is not None

    def uninstall(self) -> None:
        if self._loop is not None and self._loop.get_task_factory() == self._factory:
            self._loop.set_task_factory(self._previous)
        self._loop = None

    def _factory(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task:
        if self._previous is not None:
            task = self._previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        self.created += 1
        self._fresh.append(weakref.ref(task))
        self._creators[task] = creating_module(2)
        task.add_done_callback(self._done)
        if self.trace_creation:
            site = creation_site(2)
            if site is not None:
                self.sites[task] = site
        return task

    def _forget(self, ref: weakref.ref) -> None:
        component = self._component.pop(ref, None)
        if component is not None:
            self._counts[component] -= 1
            if not self._counts[component]:
                del self._counts[component]

    def _done(self, task: asyncio.Task) -> None:
        self.finished += 1
        self._creators.pop(task, None)
        self._forget(weakref.ref(task))

    def counts(self) -> dict[str, int]:
        """Live tasks per component, classifying only the tasks created since the last call."""
        if self._fresh:
            fresh, self._fresh = self._fresh, []
            for ref in fresh:
                task = ref()
                if task is None:
                    continue
                created_by = self._creators.pop(task, None)
                if task.done() or ref in self._component:
                    continue
                component = task_component(task, self.sites.get(task), created_by)
                # the key's callback takes a collected (never finished) task off the counts
                self._component[weakref.ref(task, self._forget)] = component
                self._counts[component] += 1
        return dict(self._counts)

    def component_of(self, task: asyncio.Task) -> str:
        """The task's component, from the cache when the tracker has classified it."""
        component = self._component.get(weakref.ref(task))
        if component is not None:
            return component
        return task_component(task, self.sites.get(task), self._creators.get(task))
