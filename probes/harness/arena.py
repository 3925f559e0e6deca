"""The arena: the bus under test runs on its own event loop in a dedicated thread.

Rendering must not slow the bus, and the UI's own tasks must not show up in the
counts, so the bus never shares a loop with the UI. Probes that read asyncio
state run inside this loop (``asyncio.all_tasks(loop)`` is only reliable there).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
from typing import Any, Coroutine, TypeVar

from busmon.bus.deadline import innermost, task_stack

T = TypeVar("T")

ARENA_THREAD_NAME = "busmon-arena"
#: what refused to stop in any arena of this process (the command line names it before exiting)
REFUSED: list[str] = []
#: how long the arena's teardown waits for cancelled tasks, async generators and its thread
TEARDOWN_GRACE_S = 1.0


class Arena:
    """Owns one event loop running forever in one daemon thread."""

    def __init__(self, name: str = ARENA_THREAD_NAME) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self._ready = threading.Event()
        #: what would not stop at teardown: ``name: innermost frame`` of each task that ignored
        #: cancellation, and the arena thread itself if it did not end in time
        self.refused: list[str] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def __enter__(self) -> Arena:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        if self.thread is not None:
            return
        self.thread = threading.Thread(target=self._main, name=self.name, daemon=True)
        self.thread.start()
        self._ready.wait()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        # our own handle on the default executor (same thread names as asyncio's), so teardown
        # can shut it down without waiting: asyncio's shutdown_default_executor joins a stuck
        # worker forever on 3.11
        self._executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
        loop.set_default_executor(self._executor)
        self.loop = loop
        loop.call_soon(self._ready.set)
        try:
            loop.run_forever()
        finally:
            try:
                self._teardown(loop)
            finally:
                loop.close()

    def _teardown(self, loop: asyncio.AbstractEventLoop) -> None:
        """Cancel what is left and wait a bounded while; name whatever refuses."""
        # what is alive now is out of the collector's reach while the tasks are cancelled and
        # unwind: each cancellation allocates (handles, an exception), which sets off full
        # collections, and each walks every live object: with 100,000 idle tasks left, those
        # were most of the teardown (bench/scaling.py, q → app exited: 3.1 s before this, the
        # wait below and the tracker letting go of its callbacks, 0.9 s after). Nothing alive
        # now is garbage yet (the tasks are still pending); left alone if something else froze
        # the heap.
        freeze = gc.isenabled() and not gc.get_freeze_count()
        if freeze:
            gc.freeze()
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            refused = loop.run_until_complete(_wait_cancelled(pending, TEARDOWN_GRACE_S)) if pending else set()
        finally:
            if freeze:
                gc.unfreeze()
        for t in pending:
            if t.done() and not t.cancelled():
                t.exception()  # retrieved: nothing for asyncio to complain about later
        for t in refused:
            stack = task_stack(t)
            self.refused.append(f"task {t.get_name()}" + (f" at {innermost(stack)}" if stack else ""))
        try:
            loop.run_until_complete(asyncio.wait_for(loop.shutdown_asyncgens(), TEARDOWN_GRACE_S))
        except (TimeoutError, RuntimeError):
            self.refused.append("async generators that would not close")
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, coro: Coroutine[Any, Any, T], name: str = "busmon.session"
               ) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the arena loop from any thread, as a task called ``name``."""
        assert self.loop is not None, "arena not started"
        return asyncio.run_coroutine_threadsafe(_named(coro, name), self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None,
            name: str = "busmon.session") -> T:
        """Run ``coro`` on the arena and block this thread until it finishes."""
        return self.submit(coro, name).result(timeout)

    def call_soon(self, fn: Any, *args: Any) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout: float = 2 * TEARDOWN_GRACE_S + 1) -> bool:
        """Stop the loop (cancelling and awaiting what is left, bounded) and join the thread.

        False if the thread did not end within ``timeout`` (something blocks the loop);
        it is a daemon thread, so it cannot keep the process alive.
        """
        if self.thread is None or self.loop is None:
            return True
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        alive = self.thread.is_alive()
        if alive:
            self.refused.append(f"thread {self.name} (its event loop is blocked)")
        else:
            self.thread = None
        REFUSED.extend(self.refused)
        return not alive


async def _wait_cancelled(tasks: list[asyncio.Task], timeout: float) -> set[asyncio.Task]:
    """Wait up to ``timeout`` for cancelled ``tasks`` to end; returns those that did not.

    Most end at their next step, which one pass of the loop runs: only those still running
    after it are waited for with ``asyncio.wait`` (a done-callback each). Waiting on every task
    cost a loop callback per task on top of its cancellation (100,000 of them at a quit with
    100,000 idle tasks).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await asyncio.sleep(0)  # one pass of the loop: the cancelled tasks take their step
    left = [t for t in tasks if not t.done()]
    if not left:
        return set()
    _, refused = await asyncio.wait(left, timeout=max(0.0, deadline - loop.time()))
    return refused


async def _named(coro: Coroutine[Any, Any, T], name: str) -> T:
    """Give the wrapping task a ``busmon.`` name, so attribution knows it is busmon's own."""
    task = asyncio.current_task()
    if task is not None:
        task.set_name(name)
    return await coro
