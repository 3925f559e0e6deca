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
import contextlib
import gc
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Literal

from busmon.probes.observe import thread_sites
from busmon.probes.observe.census import Census, os_thread_ids, running_loop
from busmon.probes.observe.loopwatch import is_watchdog_thread
from busmon.probes.observe.components import (coro_qualname, name_component, package_of, task_component,
                                             thread_component)
from busmon.probes.verdict.gc_closures import collect_noting_closed_fds
from busmon.probes.model import Leftover
from busmon.probes.verdict.ignore import IgnoreRules
from busmon.probes.verdict.resources import ResourceWatch, waitpid_detail, waitpid_pid
from busmon.probes.observe.runtime_pools import POOL_LIFETIME, machinery_reason, runtime_pool
from busmon.probes.observe.stacks import stack_component, task_stack, thread_stack
from busmon.probes.observe.timers import bus_timers, callback_component, callback_name


@dataclass(frozen=True)
class SettleOutcome:
    leftovers: tuple[Leftover, ...]
    settle_ms: float                 # from close returning to the last exit (or the deadline)
    verdict_ms: float                # from judging to the verdict being ready (GC, classification)
    final: Census | None             # everyone alive once judged (None: not asked for)
    paused_ms: float = 0.0           # a person's wait before asking for the verdict (not settle time)
    settled: bool = False            # everything waited for exited before the deadline


class SettleWatch:
    """Watches what the run left behind, from the instant close returned, until nothing the run
    created is pending any more, or the settle deadline.

    goleak's semantics: candidates are everything alive or pending that the baseline lacked,
    *whenever it appeared*: a task or thread that a timer starts after close is seen too. Kinds:
    tasks (held weakly, exits as events), Python threads and native-only threads (polled every
    ``poll_ms``; a foreign thread by its OS thread), timers the bus left scheduled on the loop
    (until they fire or are cancelled), and runtime executor threads while they run a job. The
    watch starts right after close, so exit times are measured from close even when a person
    takes a while to press the key for the settle phase.
    """

    def __init__(self, baseline: Census, at_close: Census, closed_at: float, *, timeout_s: float,
                 poll_ms: int, exclude: Any, sites=None,
                 stuck: dict[asyncio.Task, str] | None = None, tracker: Any = None,
                 since: float | None = None, resources: ResourceWatch | None = None,
                 loop: asyncio.AbstractEventLoop | None | Literal["running"] = "running",
                 kinds: frozenset[str] | None = None, unfreeze: bool = True,
                 final_census: bool = True, python_natives: set[int] | None = None,
                 rules: IgnoreRules | None = None, ended: str = "close",
                 created_at_close: int | None = None, idle_pool: Any = (), late: bool = True) -> None:
        self.baseline = baseline
        #: what appears after the end is a candidate too (goleak's semantics: a timer that starts
        #: a task after close); False for a verdict while the program goes on (busmon attach's v,
        #: --verdict-at), where what it starts meanwhile is its new work, not what was left
        self._late = True
        self.closed_at = closed_at
        self.deadline = closed_at + timeout_s
        self.poll = poll_ms / 1000
        self.exclude = exclude          # busmon's own tasks (a live WeakSet: it may grow)
        self.sites = sites
        self.stuck = stuck or {}
        self.tracker = tracker
        self.since = since               # the run's baseline (time.monotonic()): its own findings only
        self._candidate_ids: set[int] = set()
        self.exit_at: dict[object, float] = {}
        self.info: dict[object, tuple[str, str, str, tuple[str, ...], str | None]] = {}
        self.task_refs: list[weakref.ref] = []
        self.threads: list[threading.Thread] = []
        self.native: list[int] = []
        self.timers: list[asyncio.TimerHandle] = []
        self.busy_executors: set[threading.Thread] = set()
        #: when a runtime pool thread (an executor's) finished the job it was running: the end
        #: of that work, waited for like an exit (the thread itself stays, idle machinery)
        self.job_done_at: dict[threading.Thread, float] = {}
        self.os_unknown = False          # psutil could not list the OS threads
        self._python_native: set[int] = set()   # native ids of every Python thread seen
        #: native ids of Python threads started since the baseline, noted as they started (a
        #: live set): a joined thread's OS thread lingering a moment is no native-only thread
        self._born = python_natives if python_natives is not None else set()
        #: runtime pool threads idle at the baseline: one running a job now runs one submitted
        #: since, and is a candidate too
        self._idle_pool = idle_pool
        #: the ignore rules, known while settling: an ignored candidate is not waited for (its
        #: verdict is known already), so one ignored background thread does not hold settle
        #: until the deadline
        self.rules = rules
        self.ended = ended   # what the watch started after, in its words ("close", "the end")
        if resources is not None:
            resources.rules = rules
        #: the tracker's count of tasks created when ``at_close`` was taken (None: unknown): the
        #: tasks of the loop are listed again only once one was created since
        self._seen_created = created_at_close if created_at_close is not None else -1
        self.ended_at: float | None = None     # the last exit, or the deadline
        self.noticed_at: float | None = None   # when the watch saw that
        self.everything_exited = False
        self._task: asyncio.Task | None = None
        #: the loop whose tasks and timers are watched (the arena's, or a test's); None: plain
        #: synchronous code, where only threads, descriptors and processes can be left behind
        self._loop = running_loop() if loop == "running" else loop
        #: what is judged (None: everything); a kind not judged is not waited for either
        self.kinds = kinds
        #: the verdict unfreezes the GC's frozen generation (the runner froze its baseline there);
        #: False for a caller that froze nothing itself or unfreezes on its own
        self._unfreeze = unfreeze
        self._final_census = final_census   # the runner's settled counts and drift need one
        self._tasks_on = self._loop is not None and self.judges("tasks")
        self._timers_on = self._loop is not None and self.judges("timers")
        #: descriptors and child processes (None: not watched)
        self.resources = resources
        tasks, threads, _ = at_close.new_since(baseline)
        self._add_tasks(tasks)
        self._add_threads(threads)
        self._scan()
        self._late = late

    def judges(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds

    # -- candidates ------------------------------------------------------------------

    def _add_tasks(self, tasks: list[asyncio.Task]) -> None:
        if not self._tasks_on:
            return
        for task in tasks:
            if task in self.exclude or task is self._task:
                continue
            ref = weakref.ref(task)
            if ref in self.info:
                continue
            site = self.sites.get(task) if self.sites is not None else None
            self.task_refs.append(ref)
            self._candidate_ids.add(id(task))
            # describe every candidate now, while it is still alive
            component = (self.tracker.component_of(task) if self.tracker is not None
                         else task_component(task, site))  # the tracker knows who created it
            name, qualname = task.get_name(), coro_qualname(task)
            stack = tuple(task_stack(task))
            if task in self.stuck:  # busmon's wrapper around a bus call that ignored cancellation
                name = f"{self.stuck[task]} (ignored cancellation)"
                component = stack_component(stack)
            self.info[ref] = (name, component, qualname, stack, site)
            if task.done():
                self.exit_at.setdefault(ref, time.monotonic())
            else:
                task.add_done_callback(self._task_exited)

    def _add_threads(self, threads: list[threading.Thread]) -> None:
        if not self.judges("threads"):
            return
        for th in threads:
            if th in self.info or is_watchdog_thread(th):  # busmon's own, started by a nested watch
                continue
            self.threads.append(th)
            if th.native_id is not None:
                self._python_native.add(th.native_id)
            self.info[th] = (th.name, "thread:" + thread_component(th), f"ident {th.ident}, native {th.native_id}",
                             tuple(thread_stack(th)), thread_sites.site(th))

    def _scan(self) -> set[asyncio.TimerHandle]:
        """Pick up what appeared since the last look (tasks, threads, timers); return the timers
        scheduled now."""
        created = self.tracker.created if self.tracker is not None and self.tracker.installed else None
        if self._tasks_on and self._late and (created is None or created != self._seen_created):
            self._seen_created = created if created is not None else -1
            base = self.baseline.task_refs
            self._add_tasks([t for t in asyncio.all_tasks(self._loop) if weakref.ref(t) not in base])
        alive = threading.enumerate()
        self._python_native.update(t.native_id for t in alive if t.native_id is not None)
        if self._late:
            self._add_threads([t for t in alive if t not in self.baseline.threads])
        if self._idle_pool and self._late:
            self._add_threads([t for t in self._idle_pool if t not in self.info and _pool_busy(t)])
        if not self._timers_on:
            return set()
        scheduled = set(bus_timers(self._loop))
        for handle in scheduled:
            if handle not in self.baseline.timers and handle not in self.info and self._late:
                self.timers.append(handle)
                self.info[handle] = (callback_name(handle), callback_component(handle),
                                     f"due {max(0.0, handle.when() - self._loop.time()):.3f} s after {self.ended}",
                                     (), None)
        return scheduled

    # -- exits ----------------------------------------------------------------------------

    def _task_exited(self, task: asyncio.Task) -> None:
        self.exit_at.setdefault(weakref.ref(task), time.monotonic())

    def start(self) -> asyncio.Task:
        tracker = self.tracker if self.tracker is not None and self.tracker.installed else None
        before = tracker.created if tracker is not None else None
        self._task = asyncio.create_task(self._watch(), name="busmon.settle-watch")
        if tracker is not None and before == self._seen_created:
            self._seen_created = tracker.created  # the one task created since is this watch's own
        return self._task

    def _pending_tasks(self) -> list[asyncio.Task]:
        """Candidate tasks not finished yet (an ignored one is not waited for)."""
        rules = self.rules
        return [t for t in map(_deref, self.task_refs)
                if t is not None and not t.done() and (rules is None or not rules.task_reason(t))]

    def _thread_alive(self, th: threading.Thread, os_ids: set[int] | None) -> bool:
        """Alive by its OS thread: a dummy (foreign) thread's is_alive() is always true on 3.11."""
        if isinstance(th, threading._DummyThread):
            return os_ids is None or th.native_id in os_ids
        return th.is_alive()

    def _check(self, now: float, scheduled: set[asyncio.TimerHandle]) -> bool:
        """Note every exit (``scheduled``: the timers on the loop now); True while anything the
        run created is still pending."""
        os_ids = os_thread_ids() if self.judges("threads") else set()
        self.os_unknown = self.os_unknown or os_ids is None
        pending = False
        for th in self.threads:
            if th in self.exit_at:
                continue
            if not self._thread_alive(th, os_ids):
                self.exit_at[th] = now
                self.busy_executors.discard(th)
            elif (pool := runtime_pool(th)) is not None:
                if machinery_reason(th, pool) is None:
                    self.busy_executors.add(th)
                    self.job_done_at.pop(th, None)
                    pending = True
                elif th in self.busy_executors:
                    self.busy_executors.discard(th)
                    self.job_done_at[th] = now
            elif self.rules is None or not self.rules.thread_reason(th):
                pending = True  # an ignored thread is not waited for: its verdict is known
        if os_ids is not None and self.judges("threads"):
            known = self.baseline.native_ids | self._python_native | self._born
            for n in sorted(os_ids - known):
                if n not in self.native:
                    self.native.append(n)
            for n in self.native:
                if ("native", n) not in self.exit_at:
                    if n in os_ids:
                        pending = True
                    else:
                        self.exit_at[("native", n)] = now
            # a native id that turns out to be a Python thread's (one that ended since) is no
            # native-only thread at all
            self.native = [n for n in self.native if n not in self._python_native and n not in self._born]
        for ref in self.task_refs:  # done, with its done-callback not run yet: it exited now
            t = ref()
            if t is not None and t.done() and ref not in self.exit_at:
                self.exit_at[ref] = now
        for handle in self.timers:
            if handle in self.exit_at:
                continue
            if handle.cancelled() or handle not in scheduled:
                self.exit_at[handle] = now
            else:
                pending = True
        if self.resources is not None and self.resources.scan(now):
            pending = True
        return pending or bool(self._pending_tasks())

    def _look(self) -> float | None:
        """One look at everything pending: None once the watch has ended (everything exited, or
        the deadline passed, and when is noted), else the seconds left to the deadline."""
        now = time.monotonic()
        if not self._check(now, self._scan()):
            self.everything_exited = True
            gone = self.resources.exit_at.values() if self.resources is not None else ()  # sockets, children
            self.ended_at = max([self.closed_at, *self.exit_at.values(), *self.job_done_at.values(), *gone])
            self.noticed_at = time.monotonic()
            return None
        remaining = self.deadline - now
        if remaining <= 0:
            self.ended_at = self.noticed_at = now
            return None
        return remaining

    def wait_blocking(self) -> None:
        """The same watch for code with no event loop running (``loop=None``): this thread
        waits, on a pending thread's exit when there is one (``join``), else one poll."""
        assert self._loop is None or not self._loop.is_running(), "a running loop: await verdict()"
        while (remaining := self._look()) is not None:
            waiting = next((th for th in self.threads if self._awaitable(th)), None)
            if waiting is not None:
                waiting.join(min(remaining, self.poll))
            else:
                time.sleep(min(remaining, self.poll))  # the poll interval: nothing here has an exit event

    def _awaitable(self, th: threading.Thread) -> bool:
        """A thread still pending whose exit ``join()`` can wait for (not a foreign thread, not an
        idle pool thread, not one the rules ignore)."""
        return (th not in self.exit_at and th.is_alive() and not isinstance(th, threading._DummyThread)
                and runtime_pool(th) is None and (self.rules is None or not self.rules.thread_reason(th)))

    def verdict_blocking(self, rules: IgnoreRules) -> SettleOutcome:
        """:meth:`verdict` for code with no event loop running."""
        self.wait_blocking()
        return self._classify(rules, None)

    async def _watch(self) -> None:
        """Until nothing the run created is pending, or the deadline: tasks as events, the rest
        polled every ``poll_ms``."""
        while (remaining := self._look()) is not None:
            pending = self._pending_tasks()
            # an event for tasks; the timeout doubles as the poll interval for everything else
            if pending:
                await asyncio.wait(pending, timeout=min(remaining, self.poll))
            else:
                await asyncio.sleep(min(remaining, self.poll))
            del pending

    def _destroyed_elsewhere(self) -> list[Any]:
        """Pending tasks of this run the GC collected before they could be candidates (the
        tracker saw them go); those that were candidates are judged with the others."""
        if self.tracker is None or self.since is None:
            return []
        return [d for d in self.tracker.destroyed
                if d.at >= self.since and d.ident not in self._candidate_ids and not d.name.startswith("busmon.")]

    async def verdict(self, rules: IgnoreRules, judge: Callable[[], None] | None = None,
                      own_work: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                      ) -> SettleOutcome:
        """Wait for the watch to end, GC, classify every candidate. ``judge`` runs after the GC,
        while only what the run created is outside the frozen generation (the memory verdict).
        ``own_work`` wraps the blocking part (GC, classification, judging), which is busmon's:
        not the waiting, during which the bus's stalls still count."""
        if self._task is None:
            self.start()
        assert self._task is not None
        await self._task
        # a task can be done with its done-callbacks not yet run: let them run
        await asyncio.sleep(0)
        with own_work():
            return self._classify(rules, judge)

    def _classify(self, rules: IgnoreRules, judge: Callable[[], None] | None) -> SettleOutcome:
        judged_at = time.monotonic()
        exit_at, closed_at = self.exit_at, self.closed_at
        settled_at = self.ended_at if self.ended_at is not None else judged_at
        # the run's objects only: the baseline's were frozen (runner.run_once); which descriptors
        # the collection closed is what "closed only by the garbage collector" rests on
        gc_closed = collect_noting_closed_fds()

        def ms(t: float | None) -> float | None:
            return round((t - closed_at) * 1000, 2) if t is not None else None

        leftovers: list[Leftover] = []
        for ref in self.task_refs:
            name, component, qualname, stack, site = self.info[ref]
            t = ref()
            after = exit_at.get(ref)
            if after is not None:  # it finished (and may have been collected since): exited
                state, detail = "exited", qualname
                if t is not None and (reason := rules.task_reason(t)):
                    state, detail = "ignored", f"{qualname} ({reason})"
            elif t is None:  # collected by the GC without ever finishing: the bus abandoned it
                state, detail = "destroyed", f"{qualname} (destroyed while pending: nothing referenced it)"
            elif reason := rules.task_reason(t):
                state, detail = "ignored", f"{qualname} ({reason})"
            else:
                state, detail = "leaked", qualname
                stack = tuple(task_stack(t)) or stack
            leftovers.append(Leftover("task", name, component, state, ms(after), stack, site, detail))
        for d in self._destroyed_elsewhere():
            component = name_component(d.name) if "." in d.name else package_of(d.creator or "unknown")
            leftovers.append(Leftover("task", d.name, component, "destroyed", None, (), d.site,
                                      f"{d.qualname} (destroyed while pending: nothing referenced it)"))
        os_ids = os_thread_ids()
        if self.resources is not None:
            self.resources.note_ignored(rules)
        for th in self.threads:
            name, component, detail, stack, site = self.info[th]
            alive = self._thread_alive(th, os_ids)
            reason = rules.thread_reason(th)
            if reason is None and self.resources is not None and (pid := waitpid_pid(th)) in self.resources.ignored_pids:
                reason = f"waits for ignored child pid {pid}"
            if (pool := runtime_pool(th)) and not reason:
                if alive and th in self.busy_executors:
                    detail = f"{detail} (a thread of {pool}, still running a job at the deadline)"
                elif alive:
                    reason = machinery_reason(th, pool) or f"runtime: {pool}, idle; {POOL_LIFETIME[pool]}"
            state = "ignored" if reason else ("leaked" if alive else "exited")
            if reason:
                detail = f"{detail} ({reason})"
            if waits := waitpid_detail(th, self.resources):
                detail = f"{detail}; {waits}"
            if alive:
                stack = tuple(thread_stack(th)) or stack
            gone = exit_at.get(th, self.job_done_at.get(th) if state == "ignored" else None)
            leftovers.append(Leftover("thread", name, component, state, ms(gone), stack, site, detail))
        # busmon's own reading, made during the run: one int per OS thread, so with a thousand
        # threads alive it would be judged the run's retained memory if still held when judged
        del os_ids
        for n in self.native:
            after = exit_at.get(("native", n))
            state = "exited" if after else ("unknown" if self.os_unknown else "leaked")
            leftovers.append(Leftover("thread", f"native-{n}", "native", state, ms(after), (), None,
                                      "an OS thread with no Python thread object (seen through psutil): "
                                      "native code's, or a Python thread still finishing after join()"))
        for handle in self.timers:
            name, component, detail, stack, _ = self.info[handle]
            after = exit_at.get(handle)
            state = "exited" if after else "leaked"
            if after:
                detail = f"{detail}; {'cancelled' if handle.cancelled() else 'fired'}"
            leftovers.append(Leftover("timer", name, component, state, ms(after), stack, None, detail))
        if self.resources is not None:
            leftovers.extend(self.resources.judge(rules, ms, gc_closed=gc_closed, judged_at=judged_at))
        order = {"leaked": 0, "destroyed": 1, "unknown": 2, "ignored": 3, "exited": 4}
        leftovers.sort(key=lambda x: (order[x.state], x.kind, x.component, x.name))
        if judge is not None:
            judge()
        ready = time.monotonic()
        noticed = self.noticed_at if self.noticed_at is not None else judged_at
        paused_ms = max(0.0, (judged_at - noticed) * 1000)  # a person's wait is not the verdict's
        verdict_ms = ((noticed - settled_at) + (ready - judged_at)) * 1000
        if self._unfreeze:
            gc.unfreeze()
        # for the settled counts and the drift; not part of the verdict
        final = Census.take(self._loop) if self._final_census else None
        return SettleOutcome(tuple(leftovers), (settled_at - closed_at) * 1000, verdict_ms, final, paused_ms,
                             self.everything_exited)


def _pool_busy(thread: threading.Thread) -> bool:
    """A runtime pool thread running a job someone submitted (not idle, not its runtime's own)."""
    pool = runtime_pool(thread)
    return pool is not None and thread.is_alive() and machinery_reason(thread, pool) is None


def _deref(ref: weakref.ref) -> asyncio.Task | None:
    return ref()
