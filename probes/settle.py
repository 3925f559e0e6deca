"""Settle and verdict: wait, properly, for what close left behind, then classify it.

After ``close()`` returns, everything alive that the baseline did not have is a
candidate. Tasks are awaited as events (their exit time comes from a
done-callback, exact); threads have no exit event in Python, so they are polled
every ``poll_ms`` (default 10 ms) until the settle deadline. Then GC, a final
census, and every candidate becomes ``exited`` (with the milliseconds it took),
``leaked`` or ``ignored``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import gc
import threading
import time
import weakref
from dataclasses import dataclass

from probes.census import Census, os_thread_ids
from probes.components import RUNTIME_EXECUTOR_THREAD, coro_qualname, task_component, thread_component
from probes.model import Leftover
from probes.stacks import stack_component, task_stack, thread_stack


@dataclass(frozen=True)
class IgnoreRules:
    tasks: tuple[str, ...] = ()      # coroutine qualname (or task name) patterns
    threads: tuple[str, ...] = ()    # thread name patterns

    def task_reason(self, task: asyncio.Task) -> str | None:
        qualname, name = coro_qualname(task), task.get_name()
        for pattern in self.tasks:
            if fnmatch.fnmatchcase(qualname, pattern) or fnmatch.fnmatchcase(name, pattern):
                return f"ignore rule {pattern!r}"
        return None

    def thread_reason(self, thread: threading.Thread) -> str | None:
        for pattern in self.threads:
            if fnmatch.fnmatchcase(thread.name, pattern):
                return f"ignore rule {pattern!r}"
        if RUNTIME_EXECUTOR_THREAD.match(thread.name):
            return "runtime: asyncio default executor (lives until the loop shuts down)"
        return None


@dataclass(frozen=True)
class SettleOutcome:
    leftovers: tuple[Leftover, ...]
    settle_ms: float                 # from close returning to the last exit (or the deadline)
    verdict_ms: float                # from the last exit to the verdict being ready
    final: Census


class SettleWatch:
    """Watches what close left behind, from the instant close returned.

    Started right after close, so exit times are measured from close even when
    a person takes a while to press the key for the settle phase. Candidate
    tasks are held weakly, so the GC before the verdict can still collect an
    abandoned one.
    """

    def __init__(self, baseline: Census, at_close: Census, closed_at: float, *, timeout_s: float,
                 poll_ms: int, exclude: set[asyncio.Task], sites=None,
                 stuck: dict[asyncio.Task, str] | None = None) -> None:
        found_tasks, self.threads, self.native = at_close.new_since(baseline)
        self.closed_at = closed_at
        self.deadline = closed_at + timeout_s
        self.poll = poll_ms / 1000
        self.exit_at: dict[object, float] = {}
        self.info: dict[object, tuple[str, str, str, tuple[str, ...], str | None]] = {}
        self.task_refs: list[weakref.ref] = []
        for task in found_tasks:
            if task in exclude:
                continue
            site = sites.get(task) if sites is not None else None
            ref = weakref.ref(task)
            self.task_refs.append(ref)
            # describe every candidate now, while it is still alive
            name, component, qualname = task.get_name(), task_component(task, site), coro_qualname(task)
            stack = tuple(task_stack(task))
            if stuck and task in stuck:  # busmon's wrapper around a bus call that ignored cancellation
                name = f"{stuck[task]} (ignored cancellation)"
                component = stack_component(stack)
            self.info[ref] = (name, component, qualname, stack, site)
            task.add_done_callback(self._task_exited)
        for th in self.threads:
            self.info[th] = (th.name, "thread:" + thread_component(th), f"ident {th.ident}, native {th.native_id}",
                             tuple(thread_stack(th)), None)
        self.live_native = set(self.native)
        self.everything_exited = False
        self._task: asyncio.Task | None = None

    def _task_exited(self, task: asyncio.Task) -> None:
        self.exit_at.setdefault(weakref.ref(task), time.monotonic())

    def start(self) -> asyncio.Task:
        self._task = asyncio.create_task(self._watch(), name="busmon.settle-watch")
        return self._task

    def _pending_tasks(self) -> list[asyncio.Task]:
        return [t for t in map(_deref, self.task_refs) if t is not None and not t.done()]

    async def _watch(self) -> None:
        """Until everything has exited or the deadline: tasks as events, threads polled."""
        while True:
            now = time.monotonic()
            for th in self.threads:
                if th not in self.exit_at and not th.is_alive():
                    self.exit_at[th] = now
            if self.live_native:
                gone = self.live_native - os_thread_ids()
                for n in gone:
                    self.exit_at[("native", n)] = now
                self.live_native -= gone
            pending = self._pending_tasks()
            threads_left = [th for th in self.threads if th not in self.exit_at]
            if not pending and not threads_left and not self.live_native:
                self.everything_exited = True
                return
            remaining = self.deadline - now
            if remaining <= 0:
                return
            if pending:
                # an event for tasks; the timeout doubles as the thread poll interval
                polling = threads_left or self.live_native
                await asyncio.wait(pending, timeout=min(remaining, self.poll) if polling else remaining)
            else:
                await asyncio.sleep(min(remaining, self.poll))
            del pending

    async def verdict(self, rules: IgnoreRules) -> SettleOutcome:
        """Wait for the watch to end, GC, classify every candidate."""
        if self._task is None:
            self.start()
        assert self._task is not None
        await self._task
        # a task can be done with its done-callbacks not yet run: let them run
        await asyncio.sleep(0)
        exit_at, closed_at = self.exit_at, self.closed_at
        # settled: at the last exit, or (something stayed) when the watch gave up at the deadline
        settled_at = max([closed_at, *exit_at.values()]) if self.everything_exited else time.monotonic()
        gc.collect()  # the run's objects only: the baseline's were frozen (runner.run_once)
        collected_at = time.monotonic()

        leftovers: list[Leftover] = []
        for ref in self.task_refs:
            name, component, qualname, stack, site = self.info[ref]
            t = ref()
            after = exit_at.get(ref)
            if t is None:  # collected by the GC without ever finishing
                state, detail = "exited", f"{qualname} (destroyed while pending, collected by GC)"
                after = after or collected_at
            elif reason := rules.task_reason(t):
                state, detail = "ignored", f"{qualname} ({reason})"
            elif t.done():
                state, detail = "exited", qualname
            else:
                state, detail = "leaked", qualname
                stack = tuple(task_stack(t)) or stack
            leftovers.append(Leftover("task", name, component, state,
                                      round((after - closed_at) * 1000, 2) if after else None,
                                      stack, site, detail))
        for th in self.threads:
            name, component, detail, stack, _ = self.info[th]
            reason = rules.thread_reason(th)
            alive = th.is_alive()
            state = "ignored" if reason else ("leaked" if alive else "exited")
            if reason:
                detail = f"{detail} ({reason})"
            if alive:
                stack = tuple(thread_stack(th)) or stack
            after = exit_at.get(th)
            leftovers.append(Leftover("thread", name, component, state,
                                      round((after - closed_at) * 1000, 2) if after else None,
                                      stack, None, detail))
        for n in self.native:
            after = exit_at.get(("native", n))
            leftovers.append(Leftover("thread", f"native-{n}", "native", "exited" if after else "leaked",
                                      round((after - closed_at) * 1000, 2) if after else None, (), None,
                                      "an OS thread Python did not start (seen through psutil)"))
        order = {"leaked": 0, "ignored": 1, "exited": 2}
        leftovers.sort(key=lambda x: (order[x.state], x.kind, x.component, x.name))
        verdict_ms = (time.monotonic() - settled_at) * 1000
        gc.unfreeze()
        final = Census.take()  # for the settled counts and the drift; not part of the verdict
        return SettleOutcome(tuple(leftovers), (settled_at - closed_at) * 1000, verdict_ms, final)


def _deref(ref: weakref.ref) -> asyncio.Task | None:
    return ref()
