"""Ownership of the tasks a bus starts, so close can await every one of them."""

from __future__ import annotations

import asyncio
from typing import Coroutine

from busmon.bus.deadline import CANCEL_GRACE_S, cancel_and_wait


class OwnedTasks:
    """Named tasks started by the bus; ``cancel_and_wait`` leaves none alive, or names them."""

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

    async def cancel_and_wait(self, grace: float = CANCEL_GRACE_S) -> list[asyncio.Task]:
        """Cancel every owned task and await its exit; returns those that refused within ``grace``."""
        return await cancel_and_wait(list(self._tasks), grace)


__all__ = ["OwnedTasks", "cancel_and_wait"]
