"""The agent's events, out of the program: JSON lines on a pipe, written by a thread of busmon's.

The program's loop never waits on the reader: an event is put in a queue (a few microseconds)
and the channel's thread writes it. A reader that stops reading fills the pipe; the queue then
keeps at most ``MAX_WAITING`` events and drops what comes beyond it (samples, marks; counted,
and said in the agent's last line), never a verdict.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from typing import Any

from busmon.probes.model import RunFinished
from busmon.probes.observe.fds import BUSMON_FDS
from busmon.bus.secrets import scrub_tree
from busmon.probes.recording.codec import Encoder
from busmon.probes.recording.writer import FIXED_FIELDS


def shown(line: dict[str, Any]) -> dict[str, Any]:
    """An event as it may leave the program: every URL's password masked in every string (a
    task named after its connection's URL), busmon's own words left as they are."""
    return scrub_tree(line, FIXED_FIELDS)

#: what the first line says: a busmon agent's channel, in this version of the protocol
FORMAT = "busmon-agent"
VERSION = 1
#: events waiting for a slow reader, at most (samples beyond it are dropped)
MAX_WAITING = 1000
THREAD_NAME = "busmon.agent.channel"


def agent_line(**fields: Any) -> dict[str, Any]:
    """A line of the agent's own (hello, note, error, end), told apart from the events by its
    ``format``: on the pipe to ``busmon run`` and on a dashboard's socket alike."""
    return {"format": FORMAT, "version": VERSION, **fields}


def agent_bytes(**fields: Any) -> bytes:
    """:func:`agent_line` as written on the wire."""
    return (json.dumps(agent_line(**fields)) + "\n").encode()


class Channel:
    """One writer thread per agent; :meth:`put` is safe from any thread (and cheap)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_inheritable(fd, False)  # the program's own children must not keep it open
        BUSMON_FDS.add(fd)  # busmon's descriptor, never counted as the program's
        self.t0 = time.monotonic()
        self.dropped = 0
        self._encoder = Encoder()
        self._waiting: collections.deque[dict[str, Any]] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._broken = False
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def hello(self, **facts: Any) -> None:
        self._queue(agent_line(**facts))

    def error(self, message: str) -> None:
        self._queue(agent_line(error=message))

    def note(self, message: str) -> None:
        """Something ``busmon run`` says in one line (nothing was judged, and why)."""
        self._queue(agent_line(note=message))

    def put(self, event: Any) -> None:
        """An event of the recording's vocabulary (a phase, a snapshot, a sample, a result)."""
        with self._cond:
            line = shown(self._encoder.encode(time.monotonic() - self.t0, event))
        self._queue(line, droppable=not isinstance(event, RunFinished))

    def _queue(self, line: dict[str, Any], droppable: bool = False) -> None:
        with self._cond:
            if self._broken or self._closing:
                return
            if droppable and len(self._waiting) >= MAX_WAITING:
                self.dropped += 1
                return
            self._waiting.append(line)
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        """Say goodbye, write what waits (at most ``timeout``), then close the pipe: the reader
        sees its end."""
        self._queue(agent_line(end=True, dropped=self.dropped))
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        if not self._thread.is_alive():
            BUSMON_FDS.discard(self.fd)
            try:
                os.close(self.fd)
            except OSError:
                pass

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closing:
                    self._cond.wait()
                batch = list(self._waiting)
                self._waiting.clear()
                closing = self._closing
            if batch and not self._write(batch):
                return
            if closing and not batch:
                return

    def _write(self, batch: list[dict[str, Any]]) -> bool:
        data = "".join(json.dumps(x, separators=(",", ":")) + "\n" for x in batch).encode()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
        except OSError:  # the reader went away (busmon run killed): the program goes on without it
            with self._cond:
                self._broken = True
                self._waiting.clear()
            return False
        return True
