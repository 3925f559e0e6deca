"""Where the agent meets the program's event loops, without the program changing a line.

* ``asyncio.run()``, ``asyncio.Runner`` (and what runs through it: ``uvloop.run``, anyio's
  asyncio backend): :meth:`Runner.run` gets the program's main coroutine wrapped
  (:meth:`~.agent.Agent.main`), so the baseline is taken when it starts and the verdict when
  it returns, before the runner cancels what is left and closes the loop.
* A loop driven by hand (``loop.run_until_complete(...)``, ``loop.run_forever()``): the
  baseline when it first runs, the verdict when the program closes it (or, if it never does,
  at the interpreter's exit).

Each hook only adds to what asyncio does: the program's values, exceptions and signals pass
through as they were.
"""

from __future__ import annotations

import asyncio
import weakref
from asyncio import coroutines, events
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from busmon.probes.agent.agent import Agent

#: loops a Runner made (their run_until_complete calls, its shutdown steps included, are the
#: Runner's own: each of its run() calls is judged as a main coroutine)
_RUNNER_LOOPS: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
#: loops busmon is running its verdict on, right now
_JUDGING: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
#: loops driven by hand that the agent watches, judged at close() or at exit
HAND_LOOPS: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_ORIGINAL: dict[str, Any] = {}


def install(agent: Agent) -> None:
    """Hook the runner and the base loop's run and close methods (once per process)."""
    if _ORIGINAL:
        return
    runner_run = _ORIGINAL["Runner.run"] = asyncio.Runner.run
    until_complete = _ORIGINAL["run_until_complete"] = asyncio.BaseEventLoop.run_until_complete
    forever = _ORIGINAL["run_forever"] = asyncio.BaseEventLoop.run_forever
    close = _ORIGINAL["close"] = asyncio.BaseEventLoop.close

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

    def begin_by_hand(loop: asyncio.BaseEventLoop) -> None:
        if loop in _RUNNER_LOOPS or loop in HAND_LOOPS or loop in _JUDGING or loop.is_running() or loop.is_closed():
            return
        if agent.begin(loop) is not None:
            HAND_LOOPS.add(loop)

    def run_until_complete(self: asyncio.BaseEventLoop, future: Any) -> Any:
        begin_by_hand(self)
        return until_complete(self, future)

    def run_forever(self: asyncio.BaseEventLoop) -> None:
        begin_by_hand(self)
        return forever(self)

    def close_judged(self: asyncio.BaseEventLoop) -> None:
        if self in HAND_LOOPS:
            HAND_LOOPS.discard(self)
            judge_by_hand(agent, self)
        close(self)

    asyncio.Runner.run = run  # type: ignore[method-assign]
    asyncio.BaseEventLoop.run_until_complete = run_until_complete  # type: ignore[method-assign]
    asyncio.BaseEventLoop.run_forever = run_forever  # type: ignore[method-assign]
    asyncio.BaseEventLoop.close = close_judged  # type: ignore[method-assign]


def judge_by_hand(agent: Agent, loop: asyncio.BaseEventLoop) -> None:
    """The verdict on a loop driven by hand, run on it before it closes (it must be idle)."""
    if loop.is_running() or loop.is_closed():
        agent.end(loop)
        return
    _JUDGING.add(loop)
    try:
        _ORIGINAL["run_until_complete"](loop, agent.judge(loop))
    finally:
        _JUDGING.discard(loop)


def judge_unclosed(agent: Agent) -> None:
    """At exit: the loops driven by hand that the program never closed, judged now."""
    for loop in list(HAND_LOOPS):
        HAND_LOOPS.discard(loop)
        judge_by_hand(agent, loop)
