"""The records only a recording has, beside the arena's events: what it is, where a backend's
runs begin (``busmon compare``), and how the command ended."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

#: the first line's ``format``: what a file must say to be read as a recording
FORMAT = "busmon-recording"
#: this busmon writes version 1; a reader accepts its own version and older ones
VERSION = 1


@dataclass(frozen=True, slots=True)
class Header:
    """The first line: what was recorded, by which busmon, where and when."""

    command: str                     # dashboard | play | compare
    scenario: Mapping[str, Any]      # as played (secrets masked): name, backend, url, runs…
    scenario_path: str | None        # the file as given on the command line (None: the dashboard's own)
    target: str                      # where the bus pointed, password masked
    busmon: str                      # busmon's version
    python: str
    platform: str
    started: str                     # ISO 8601, UTC
    version: int = VERSION
    headless: bool = False           # the run was played without the dashboard (its Samples are all there)
    backends: tuple[str, ...] = ()   # compare: the backends, in order


@dataclass(frozen=True, slots=True)
class Segment:
    """``busmon compare``: the runs that follow are played on ``backend``."""

    backend: str
    target: str


@dataclass(frozen=True, slots=True)
class Ended:
    """The command ended (the last line; a file without it was cut short)."""

    interrupted: bool
    logs: tuple[Mapping[str, Any], ...] = field(default=())  # the libraries' log lines, counted
