"""The arena: the bus under test runs on its own event loop in a dedicated thread.

Rendering must not slow the bus, and the UI's own tasks must not show up in the
counts, so the bus never shares a loop with the UI. Probes that read asyncio
state run inside this loop (``asyncio.all_tasks(loop)`` is only reliable there).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")

ARENA_THREAD_NAME = "busmon-arena"


class Arena:
    """Owns one event loop running forever in one daemon thread."""

    def __init__(self, name: str = ARENA_THREAD_NAME) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self._ready = threading.Event()

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
        self.loop = loop
        loop.call_soon(self._ready.set)
        try:
            loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.wait(pending))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

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

    def stop(self) -> None:
        """Stop the loop (cancelling and awaiting what is left) and join the thread."""
        if self.thread is None or self.loop is None:
            return
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.thread = None


async def _named(coro: Coroutine[Any, Any, T], name: str) -> T:
    """Give the wrapping task a ``busmon.`` name, so attribution knows it is busmon's own."""
    task = asyncio.current_task()
    if task is not None:
        task.set_name(name)
    return await coro
