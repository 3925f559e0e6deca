"""Ownership of the tasks a bus starts, so close can await every one of them."""

from __future__ import annotations

import asyncio
from typing import Coroutine, Iterable


class OwnedTasks:
    """Named tasks started by the bus; ``cancel_and_wait`` leaves none alive."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Coroutine, name: str) -> asyncio.Task:
        if not name.startswith("bus."):
            raise ValueError(f"bus task names start with 'bus.', got {name!r}")
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_and_wait(self) -> None:
        await cancel_and_wait(list(self._tasks))


async def cancel_and_wait(tasks: Iterable[asyncio.Task | None]) -> None:
    """Cancel ``tasks`` and await their exit: cancelling alone leaves them running a while.

    The caller's own task is skipped (it cannot await itself).
    """
    current = asyncio.current_task()
    pending = [t for t in tasks if t is not None and t is not current and not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending)
