"""Who decides when the next phase starts: a script (immediately) or a person (a key press)."""

from __future__ import annotations

import asyncio


class AutoGate:
    """Scripted playback: every phase starts as soon as the previous one ends."""

    async def before(self, run: str, phase: str) -> None:
        return None


class StepGate:
    """Interactive: each phase waits for ``release()``, which any thread may call."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()
        self.waiting_for: str | None = None

    async def before(self, run: str, phase: str) -> None:
        self.waiting_for = phase
        try:
            await self._event.wait()
        finally:
            self._event.clear()
            self.waiting_for = None

    def release(self) -> None:
        """Let the next phase start (thread-safe)."""
        self._loop.call_soon_threadsafe(self._event.set)
