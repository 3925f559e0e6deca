"""Ctrl-C as an event the headless loop reads, never a KeyboardInterrupt wherever it lands.

``timeout -s INT`` signals busmon and then its whole process group: two SIGINTs microseconds
apart, the second often while the first is still being handled. Raised as KeyboardInterrupt,
either could land anywhere (mid-print, inside a lock, between two lines of the handler of the
first) and unwind past the code that writes the report. Here a SIGINT only records when it came
and wakes whoever waits; the reader decides what it means: signals closer together than
:data:`SAME_PRESS_S` are one Ctrl-C, a later one is a second press.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType
from typing import Any, Callable

#: a second SIGINT sooner than this after the first is the same Ctrl-C (a wrapper signalling
#: the process and then its group), not a person pressing twice
SAME_PRESS_S = 1.0


class Interrupts:
    """SIGINTs, recorded while installed (main thread only; elsewhere it records nothing and
    Python's KeyboardInterrupt stays as it is)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.wake: Callable[[], None] | None = None   # called from the handler: must be reentrant
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_signal)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    @property
    def installed(self) -> bool:
        return self._installed

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.times.append(time.monotonic())  # list.append is atomic: safe at any bytecode
        wake = self.wake
        if wake is not None:
            wake()

    def presses(self) -> int:
        """Ctrl-C presses so far: signals within :data:`SAME_PRESS_S` of a press are that press."""
        count, start = 0, None
        for t in list(self.times):
            if start is None or t - start > SAME_PRESS_S:
                count, start = count + 1, t
        return count
