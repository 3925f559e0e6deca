"""Who decides when the next phase starts: a script (immediately) or a person (a key press)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable


class AutoGate:
    """Scripted playback: every phase starts as soon as the previous one ends."""

    async def before(self, run: str, phase: str) -> None:
        return None


@dataclass(frozen=True, slots=True)
class AwaitingStep:
    """The runner is ready for ``phase`` of ``run`` and waits for a person to say go."""

    run: str
    phase: str


class StepGate:
    """Interactive: each phase waits for ``release()``, which any thread may call."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 on_wait: Callable[[object], None] | None = None) -> None:
        self._loop = loop
        self._event = asyncio.Event()
        self._on_wait = on_wait
        self.waiting_for: str | None = None

    async def before(self, run: str, phase: str) -> None:
        self.waiting_for = phase
        if self._on_wait is not None:
            self._on_wait(AwaitingStep(run, phase))
        try:
            await self._event.wait()
        finally:
            self._event.clear()
            self.waiting_for = None

    def release(self) -> None:
        """Let the next phase start (thread-safe)."""
        self._loop.call_soon_threadsafe(self._event.set)
