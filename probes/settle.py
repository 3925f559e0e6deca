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
from probes.stacks import task_stack, thread_stack


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


async def settle(baseline: Census, at_close: Census, closed_at: float, *, timeout_s: float,
                 poll_ms: int, rules: IgnoreRules, exclude: set[asyncio.Task],
                 sites=None) -> SettleOutcome:
    found_tasks, threads, native = at_close.new_since(baseline)
    # candidates are held weakly, so that the GC below can still collect an abandoned task
    task_refs = [weakref.ref(t) for t in found_tasks if t not in exclude]
    exit_at: dict[object, float] = {}
    info: dict[object, tuple[str, str, str, tuple[str, ...], str | None]] = {}
    for task in found_tasks:
        if task in exclude:
            continue
        site = sites.get(task) if sites is not None else None
        info[weakref.ref(task)] = (task.get_name(), task_component(task, site), coro_qualname(task),
                                   tuple(task_stack(task)), site)
        task.add_done_callback(lambda done: exit_at.setdefault(weakref.ref(done), time.monotonic()))
    del found_tasks
    task = None
    for th in threads:
        info[th] = (th.name, "thread:" + thread_component(th), f"ident {th.ident}, native {th.native_id}",
                    tuple(thread_stack(th)), None)

    deadline = closed_at + timeout_s
    poll = poll_ms / 1000
    live_native = set(native)
    while True:
        now = time.monotonic()
        for th in threads:
            if th not in exit_at and not th.is_alive():
                exit_at[th] = now
        if live_native:
            gone = live_native - os_thread_ids()
            for n in gone:
                exit_at[("native", n)] = now
            live_native -= gone
        pending = [t for t in map(_deref, task_refs) if t is not None and not t.done()]
        threads_left = [th for th in threads if th not in exit_at]
        if not pending and not threads_left and not live_native:
            break
        remaining = deadline - now
        if remaining <= 0:
            break
        if pending:
            # an event for tasks; the timeout doubles as the thread poll interval
            await asyncio.wait(pending, timeout=min(remaining, poll) if threads_left or live_native else remaining)
        else:
            await asyncio.sleep(min(remaining, poll))
        del pending
    everything_exited = not pending and not threads_left and not live_native
    del pending
    settled_at = max(exit_at.values(), default=closed_at) if everything_exited else time.monotonic()
    gc.collect()  # the run's objects only: the baseline's were frozen (runner.run_once)
    collected_at = time.monotonic()

    leftovers: list[Leftover] = []
    for ref in task_refs:
        name, component, qualname, stack, site = info[ref]
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
    for th in threads:
        name, component, detail, stack, _ = info[th]
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
    for n in native:
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
