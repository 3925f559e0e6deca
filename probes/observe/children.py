"""Child processes: which ones the run started and left behind, by identity.

A child is known by its pid *and* its start time, so a pid the kernel reused for an
unrelated process is a new child, not the old one. On Linux the children are read from
``/proc/<pid>/task/<tid>/children`` (a few small files), not by scanning every process on
the machine as ``psutil.Process.children()`` does; elsewhere psutil does it.

A child that has exited but was never waited for is a *zombie*: still in the process
table, so still pending while settling, and a leftover at the deadline (its parent, the
bus, must reap it).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

import psutil

from busmon.bus.deadline import add_machinery, short_file

from busmon.probes.observe.fds import Owner, caller_owner

_PROC = "/proc"
_FAST = sys.platform.startswith("linux") and os.path.isdir(f"{_PROC}/self/task")


@dataclass(frozen=True, slots=True)
class Child:
    pid: int
    started: float          # the process's start time: with the pid, its identity
    cmdline: str            # the whole command line, as the ignore rules match it
    status: str             # psutil's: running, sleeping, zombie, ...
    argv: tuple[str, ...] = ()  # its words as the process was given them (empty: not readable)

    @property
    def key(self) -> tuple[int, float]:
        return (self.pid, self.started)

    @property
    def zombie(self) -> bool:
        return self.status == psutil.STATUS_ZOMBIE

    @property
    def program(self) -> str:
        """The executable by its name (``python``), not its path."""
        first = self.argv[0] if self.argv else self.cmdline
        return os.path.basename(first) or first or "?"

    def short(self, limit: int) -> str:
        """The command line for one line of text: see :func:`short_command`."""
        return short_command(self.argv, limit) if self.argv else _cut(self.cmdline, limit)


def short_command(argv: tuple[str, ...] | list[str], limit: int) -> str:
    """``python -c import sys; sys.stdin.buffer.read()``: a command line within ``limit``
    characters that keeps its arguments.

    The executable goes by its name (its folder is what makes a line long, and it depends on
    where the venv is); when the line is still too long, an argument that is an existing file
    keeps its file name (``…/serve.py``: never a ``-c`` program that happens to hold a ``/``);
    only then is the end cut. The result never depends on the folder the executable is in.
    """
    words = [os.path.basename(argv[0]) or argv[0], *argv[1:]]
    line = " ".join(words)
    if len(line) > limit:
        words = [words[0], *(_short_path(w) for w in words[1:])]
        line = " ".join(words)
    return _cut(line, limit)


def _short_path(word: str) -> str:
    head, tail = os.path.split(word)
    return f"…/{tail}" if head and tail and os.path.isfile(word) else word


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def _child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's, as the kernel files them)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"{_PROC}/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        # os.open/os.read rather than open(): no buffered file object per thread (there is a
        # file per thread, and settling reads them all at every poll)
        try:
            fd = os.open(f"{_PROC}/{pid}/task/{tid}/children", os.O_RDONLY)
        except OSError:
            continue
        try:
            data = b""
            while chunk := os.read(fd, 65536):
                data += chunk
            out.extend(int(x) for x in data.split())
        except (OSError, ValueError):
            continue
        finally:
            os.close(fd)
    return out


def _describe(proc: psutil.Process) -> Child | None:
    try:
        with proc.oneshot():
            status = proc.status()
            started = proc.create_time()
            try:
                argv = tuple(proc.cmdline())
            except (psutil.AccessDenied, psutil.ZombieProcess):
                argv = ()
            cmd = " ".join(argv) or proc.name()
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:
        return Child(proc.pid, 0.0, "?", "unknown")
    return Child(proc.pid, started, cmd or "?", status, argv)


def children() -> dict[tuple[int, float], Child]:
    """Every descendant of this process now, keyed by identity (pid, start time)."""
    found: dict[tuple[int, float], Child] = {}
    if _FAST:
        todo, seen = _child_pids(os.getpid()), set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                child = _describe(psutil.Process(pid))
            except psutil.Error:
                continue
            if child is not None:
                found[child.key] = child
                todo.extend(_child_pids(pid))
        return found
    try:
        procs = psutil.Process().children(recursive=True)
    except psutil.Error:
        return found
    for proc in procs:
        child = _describe(proc)
        if child is not None:
            found[child.key] = child
    return found


class ProcessOwners:
    """Who started each child process through the arena loop (``loop.subprocess_exec`` /
    ``subprocess_shell``, what ``asyncio.create_subprocess_*`` call): pid → creation site.

    busmon owns the arena loop, so wrapping its instance methods is legitimate; only the pid
    and a string are kept, never the transport.
    """

    def __init__(self) -> None:
        self.sites: dict[int, Owner] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        add_machinery(short_file(__file__))  # its wrapper is never where a call is stuck
        self._loop = loop
        for name in ("subprocess_exec", "subprocess_shell"):
            original = getattr(loop, name)
            setattr(loop, name, self._wrap(original))

    def uninstall(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            for name in ("subprocess_exec", "subprocess_shell"):
                loop.__dict__.pop(name, None)

    def _wrap(self, original: Any) -> Any:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            owner = caller_owner(1)
            transport, protocol = await original(*args, **kwargs)
            pid = transport.get_pid()
            if pid is not None and owner is not None:
                with self._lock:
                    if len(self.sites) > 10_000:
                        self.sites.clear()
                    self.sites[pid] = owner
            return transport, protocol
        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        return wrapper

    def owner(self, pid: int) -> Owner | None:
        """(component, creation site) of a child started through the loop, else None."""
        return self.sites.get(pid)


def descendant_count() -> int:
    """How many descendants this process has now (no description of each: for a gauge)."""
    if not _FAST:
        try:
            return len(psutil.Process().children(recursive=True))
        except psutil.Error:
            return 0
    todo, seen = _child_pids(os.getpid()), set()
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(_child_pids(pid))
    return len(seen)
