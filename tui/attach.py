"""``busmon attach PID|SOCKET``: the dashboard, fed live by the agent in a running program.

:class:`AgentConnection` finds the agent's socket (by the program's pid, in the private
directory agents listen in, or by its path), says hello and reads the agent's events on a
thread of its own; every way that can fail (no such process, a process without an agent, a
stale socket, a socket that is not an agent's, another version of busmon) is one line.
:class:`AttachController` stands where the dashboard's controller stands, like a replay's:
the app drains the events from it, and its keys become the agent's fixed requests
(``b`` baseline, ``v`` verdict, ``m`` mark; ``q`` detaches: the program goes on). Textual-free.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import stat
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from busmon.probes.agent.channel import FORMAT, VERSION
from busmon.probes.agent.socket_dir import UnsafeSocketDir, socket_path
from busmon.probes.model import RunFinished, ScenarioResult
from busmon.probes.recording.codec import DamagedLine, Decoder
from busmon.tui.controller import PlaybackDone
from busmon.tui.replay_controller import RecordedSession

#: how long connecting and the agent's hello may take
HELLO_S = 5.0


class AttachError(Exception):
    """Cannot attach: one line, exit 2."""


def find_socket(target: str) -> Path:
    """The agent's socket for ``target``: a pid (the program's) or the socket's path."""
    if target.isdigit():
        pid = int(target)
        try:
            path = socket_path(pid)
        except UnsafeSocketDir as exc:
            raise AttachError(f"attach {target}: {exc}") from None
        if not path.exists():
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                raise AttachError(f"attach {pid}: no such process") from None
            except PermissionError:
                raise AttachError(f"attach {pid}: another user's process; busmon attaches to your own only") from None
            if (child := _program_of(pid)) is not None:
                raise AttachError(f"attach {pid}: that is busmon run itself; its program is pid {child}: "
                                  f"busmon attach {child}")
            raise AttachError(f"attach {pid}: the process has no busmon agent listening (start it with "
                              "busmon run --listen -- python …)")
        return path
    path = Path(target)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise AttachError(f"attach {target}: {exc.strerror or exc}: expected the program's pid (busmon run --listen "
                          "prints it) or its socket's path") from None
    if not stat.S_ISSOCK(mode):
        raise AttachError(f"attach {target}: not a socket (expected a pid, or the socket busmon run --listen printed)")
    return path


def _program_of(pid: int) -> int | None:
    """When ``pid`` is ``busmon run``, the pid of its program that listens (None otherwise)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        command = proc.cmdline()
        children = proc.children()
    except psutil.Error:
        return None
    if not any("busmon" in part for part in command) or "run" not in command:
        return None
    for child in children:
        try:
            if socket_path(child.pid).exists():
                return child.pid
        except UnsafeSocketDir:
            return None
    return None


class AgentConnection:
    """One dashboard's connection to one agent: hello, then events in, requests out."""

    def __init__(self, path: Path, timeout: float = HELLO_S) -> None:
        self.path = path
        self.facts: dict[str, Any] = {}
        self.events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.ended = threading.Event()       # the agent's end closed (the program exited or detached us)
        self.end_said = False                # the agent said goodbye (the program is exiting)
        self.dropped = 0                     # samples the agent dropped while we did not keep up
        self.errors: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except ConnectionRefusedError:
            self._sock.close()
            raise AttachError(f"attach: {path}: a stale socket, nobody listens on it (the program has ended)") from None
        except OSError as exc:
            self._sock.close()
            raise AttachError(f"attach: {path}: cannot connect: {exc.strerror or exc}") from None
        self._file = self._sock.makefile("rb")
        self._lock = threading.Lock()
        try:
            self.send({"hello": "busmon-attach", "version": VERSION})
            self.facts = self._hello()
        except AttachError:
            self.close()
            raise
        self._sock.settimeout(None)
        self._decoder = Decoder()
        self._thread = threading.Thread(target=self._read, name="busmon.attach-reader", daemon=True)

    def _hello(self) -> dict[str, Any]:
        try:
            raw = self._file.readline(65536)
        except (socket.timeout, OSError):
            raise AttachError(f"attach: {self.path}: no answer from it in {HELLO_S:g} s (not a busmon agent?)") from None
        try:
            line = json.loads(raw)
        except ValueError:
            line = None
        if not isinstance(line, dict) or line.get("format") != FORMAT:
            raise AttachError(f"attach: {self.path}: not a busmon agent's socket (it said {raw[:40]!r})")
        if "error" in line:
            raise AttachError(f"attach: {line['error']}")
        if line.get("version") != VERSION:
            raise AttachError(f"attach: the agent speaks version {line.get('version')} of busmon's attach protocol, "
                              f"this busmon {VERSION}: use the same busmon for both")
        return line

    def start(self) -> None:
        self._thread.start()

    def send(self, request: dict[str, Any]) -> bool:
        """A request to the agent; False if it is gone."""
        data = (json.dumps(request) + "\n").encode()
        with self._lock:
            try:
                self._sock.sendall(data)
                return True
            except OSError:
                return False

    def _read(self) -> None:
        try:
            for raw in self._file:
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(line, dict) and line.get("format") == FORMAT:
                    if line.get("end"):
                        self.end_said = True
                    if "dropped" in line:
                        self.dropped = int(line.get("dropped") or 0)
                    if "error" in line:
                        self.errors.append(str(line["error"]))
                    continue
                try:
                    _, event = self._decoder.decode(line)
                except DamagedLine:
                    continue
                self.events.put(event)
        except (OSError, ValueError):
            pass
        finally:
            self.ended.set()
            self.events.put(_ENDED)

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


_ENDED = object()


class AttachController:
    """The dashboard's controller for a live program: events from its agent, keys as requests."""

    interactive = False
    replaying = False
    attached = True

    def __init__(self, conn: AgentConnection, record: Callable[[object], None] | None = None,
                 recording_to: str = "") -> None:
        self.conn = conn
        self._record = record
        label = str(conn.facts.get("label") or "the program")
        self.label = label
        self.pid = conn.facts.get("pid")
        self.scenario = SimpleNamespace(name=label, backend="program", url="", runs=(),
                                        probes=SimpleNamespace(interval_ms=100))
        self.session = RecordedSession()
        self.stopped = False
        self.marks = 0
        self.recording_to = recording_to  # --record's file, said in the header while recording
        self._done_sent = False
        self._detached = False

    def start(self) -> None:
        self.conn.start()

    @property
    def program_ended(self) -> bool:
        """The agent's end closed while we were attached: the program exited (a detach closes
        it too, from our side: not the program ending)."""
        return self.conn.ended.is_set() and not self._detached

    def status_text(self) -> str:
        """``ATTACHED pid 4242`` / ``the program exited``, and samples dropped, if any."""
        text = f"ATTACHED pid {self.pid}" if not self.program_ended else f"pid {self.pid} exited: last state kept"
        if self.conn.dropped:
            text += f" · {self.conn.dropped:,} samples dropped"
        return text

    # -- the keys ---------------------------------------------------------------------------------

    def baseline(self) -> bool:
        return self.conn.send({"request": "baseline"})

    def verdict(self) -> bool:
        return self.conn.send({"request": "verdict"})

    def mark(self) -> str:
        self.marks += 1
        name = f"mark {self.marks}"
        return name if self.conn.send({"request": "mark", "name": name}) else ""

    def next_phase(self) -> bool:
        return False

    def set_interval(self, interval_ms: int) -> None:
        """The agent samples at its own rate while attached."""

    # -- what the app calls -----------------------------------------------------------------------

    def drain(self, limit: int = 10_000) -> list[object]:
        out: list[object] = []
        try:
            while len(out) < limit:
                event = self.conn.events.get_nowait()
                if event is _ENDED:
                    if not self._done_sent:
                        self._done_sent = True
                        out.append(PlaybackDone(self.result(), None))
                    continue
                if isinstance(event, RunFinished):
                    self.session.results.append(event.result)
                if self._record is not None:
                    self._record(event)
                out.append(event)
        except queue.Empty:
            pass
        return out

    def result(self) -> ScenarioResult:
        return ScenarioResult(self.label, tuple(self.session.results))

    async def stop_playback(self) -> None:
        """Detach: the program goes on as it was."""
        self._detach()

    def _detach(self) -> None:
        if not self.conn.ended.is_set():
            self._detached = True
            self.conn.send({"request": "detach"})

    def shutdown(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self._detach()
        self.conn.close()
