"""Where the agent meets the program's event loops, without the program changing a line.

* ``asyncio.run()``, ``asyncio.Runner`` (and what runs through it: ``uvloop.run``, anyio's
  asyncio backend): :meth:`Runner.run` gets the program's main coroutine wrapped
  (:meth:`~.agent.Agent.main`), so the baseline is taken when it starts and the verdict when
  it returns, before the runner cancels what is left and closes the loop.
* A loop driven by hand (``loop.run_until_complete(...)``, ``loop.run_forever()``), asyncio's
  or uvloop's (hooked when the program imports uvloop, never imported by busmon): the
  baseline when it first runs, the verdict when the program closes it (or, if it never does,
  at the interpreter's exit).

Each hook only adds to what asyncio does: the program's values, exceptions and signals pass
through as they were.
"""

from __future__ import annotations

import asyncio
import importlib.abc
import importlib.util
import sys
import weakref
from asyncio import coroutines, events
from typing import TYPE_CHECKING, Any

from busmon.probes.observe.fds import BUSMON_FDS, fd_table, identities

if TYPE_CHECKING:
    from busmon.probes.agent.agent import Agent

#: loops a Runner made (their run_until_complete calls, its shutdown steps included, are the
#: Runner's own: each of its run() calls is judged as a main coroutine)
_RUNNER_LOOPS: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
#: loops busmon is running its verdict on, right now
_JUDGING: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
#: loops driven by hand that the agent watches, judged at close() or at exit
HAND_LOOPS: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_INSTALLED: list[bool] = []  # once per process


def install(agent: Agent) -> None:
    """Hook the runner, and the run and close methods of asyncio's base loop and of uvloop's
    (as soon as the program imports it), once per process."""
    if _INSTALLED:
        return
    _INSTALLED.append(True)
    runner_run = asyncio.Runner.run

    def run(self: asyncio.Runner, coro: Any, *, context: Any = None) -> Any:
        if not coroutines.iscoroutine(coro) or events._get_running_loop() is not None:
            return runner_run(self, coro, context=context)  # asyncio's own error, as it was
        try:
            self._lazy_init()  # type: ignore[attr-defined]  # the loop, made as run() would
            loop = self.get_loop()
        except Exception:
            return runner_run(self, coro, context=context)
        _RUNNER_LOOPS.add(loop)
        watched = agent.main(coro, lambda: getattr(self, "_interrupt_count", 0) > 0)
        return runner_run(self, watched, context=context)

    asyncio.Runner.run = run  # type: ignore[method-assign]
    hook_loop_class(asyncio.BaseEventLoop, agent)
    if "uvloop" in sys.modules:
        hook_loop_class(sys.modules["uvloop"].Loop, agent)
    else:
        sys.meta_path.insert(0, _AfterImport("uvloop", lambda module: hook_loop_class(module.Loop, agent)))


def hook_loop_class(cls: type, agent: Agent) -> None:
    """A loop class run by hand (``run_until_complete``, ``run_forever``): watched from its first
    run, judged when the program closes it."""
    until_complete, forever, close = cls.run_until_complete, cls.run_forever, cls.close

    def begin_by_hand(loop: Any) -> None:
        if loop in _RUNNER_LOOPS or loop in HAND_LOOPS or loop in _JUDGING or loop.is_running() or loop.is_closed():
            return
        HAND_LOOPS.add(loop)
        # the baseline as the loop's first callback: what the loop makes for itself when it
        # starts running (uvloop's self-pipe) is there, and nothing of the program has run yet
        loop.call_soon(begin_now, loop)

    def begin_now(loop: Any) -> None:
        if agent.begin(loop) is None:
            HAND_LOOPS.discard(loop)

    def run_until_complete(self: Any, future: Any) -> Any:
        begin_by_hand(self)
        return until_complete(self, future)

    def run_forever(self: Any) -> None:
        begin_by_hand(self)
        return forever(self)

    def close_judged(self: Any) -> None:
        if self in HAND_LOOPS:
            HAND_LOOPS.discard(self)
            judge_by_hand(agent, self)
        close(self)

    cls.run_until_complete = run_until_complete
    cls.run_forever = run_forever
    cls.close = close_judged


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls ``then(module)`` once ``name`` has been imported by the program (and only then:
    busmon never imports uvloop itself)."""

    def __init__(self, name: str, then: Any) -> None:
        self.name = name
        self.then = then

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # found once, by the finders after this one
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module
        then = self.then

        def exec_and_hook(module: Any) -> None:
            exec_module(module)
            try:
                then(module)
            except Exception:  # a uvloop whose shape busmon does not know: run by Runner only
                pass
        spec.loader.exec_module = exec_and_hook  # type: ignore[method-assign]
        return spec


def judge_by_hand(agent: Agent, loop: asyncio.BaseEventLoop) -> None:
    """The verdict on a loop driven by hand, run on it before it closes (it must be idle)."""
    if loop.is_running() or loop.is_closed():
        agent.end(loop)
        return
    before = _descriptors()

    async def judge() -> None:
        # what the loop opened for this run of its own (uvloop makes its signal socketpair
        # afresh at each run): the loop's, not the program's
        own = {fd for fd, _ in _descriptors() - before}
        BUSMON_FDS.update(own)
        try:
            await agent.judge(loop)
        finally:
            BUSMON_FDS.difference_update(own)

    _JUDGING.add(loop)
    try:
        loop.run_until_complete(judge())  # hooked: a loop being judged is not begun again
    finally:
        _JUDGING.discard(loop)


def _descriptors() -> set[tuple[int, str]]:
    table = fd_table()
    return identities(table) if table is not None else set()


def judge_unclosed(agent: Agent) -> None:
    """At exit: the loops driven by hand that the program never closed, judged now."""
    for loop in list(HAND_LOOPS):
        HAND_LOOPS.discard(loop)
        judge_by_hand(agent, loop)
