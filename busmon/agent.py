"""Marks a program sets for ``busmon run``: named moments and phases of a running service.

::

    import busmon.agent

    busmon.agent.mark("ready")                 # a moment: a row in the report, a line in the dashboard
    async with busmon.agent.phase("load"):     # a stretch: its start and its end
        ...

Without busmon (the program started as usual) nothing here does anything: no part of busmon
is imported and each call is one test of a module global. Under ``busmon run`` the agent,
started before the program's first line, sets :data:`_sink` and each mark becomes a phase in
the report, the recording and the dashboard; ``--verdict-at`` and ``--baseline-at`` name them.
"""

from __future__ import annotations

from types import TracebackType
from typing import Callable, Optional

#: the agent's receiver of marks (None: the program runs without busmon). Called with the
#: mark's name and whether it opens a phase (True), closes one (False) or is a moment (None).
_sink: Optional[Callable[[str, Optional[bool]], None]] = None


def active() -> bool:
    """Whether this program runs under ``busmon run`` (its agent is in place)."""
    return _sink is not None


def mark(name: str) -> None:
    """A named moment (``"ready"``, ``"consumer stopped"``): a no-op without busmon."""
    if _sink is not None:
        _sink(str(name), None)


class phase:
    """``async with phase("load"):`` (or plain ``with``): a named stretch of the program's life;
    its start and its end are marks. A no-op without busmon."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = str(name)

    def __enter__(self) -> "phase":
        if _sink is not None:
            _sink(self.name, True)
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if _sink is not None:
            _sink(self.name, False)

    async def __aenter__(self) -> "phase":
        return self.__enter__()

    async def __aexit__(self, exc_type: Optional[type], exc: Optional[BaseException],
                        tb: Optional[TracebackType]) -> None:
        self.__exit__(exc_type, exc, tb)


__all__ = ["active", "mark", "phase"]
