"""``busmon run --listen``: the agent's socket, for ``busmon attach`` to watch the program live.

One thread of busmon's (started with the agent, before the program's first line, so it is in
every baseline) serves one attached dashboard at a time over a Unix socket in a private
directory (see :mod:`.socket_dir`): socket 0600, and a peer of another user is refused by its
credentials (``SO_PEERCRED``) whatever the file's mode. Nothing received is ever executed:
the dashboard sends one of a fixed set of requests (``baseline``, ``verdict``, ``mark``,
``detach``) as JSON lines, and the agent answers with the recording's events.

While someone is attached the program's loops are sampled (``interval_ms``); while nobody
is, nothing is sampled, queued or kept. The program's loop never waits on the dashboard:
what a slow reader has not taken is held up to ``MAX_BUFFER`` bytes (``--listen-buffer``), past
that samples and marks are dropped (counted, and said; never a verdict); a dashboard that dies is noticed at once (its end of the socket
closes) and what was held for it is freed.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from busmon.probes.agent.channel import VERSION, agent_bytes, shown
from busmon.probes.model import RunFinished
from busmon.probes.observe.fds import BUSMON_FDS
from busmon.probes.recording.codec import Encoder


class Served(Protocol):
    """What the listener asks of the agent it serves (:class:`~.agent.Agent`)."""

    channel: Any

    def facts(self) -> dict[str, Any]: ...
    def history(self) -> list[Any]: ...
    def mark(self, name: str, opens: bool | None) -> None: ...
    def baseline_all(self) -> None: ...
    def verdict_all(self) -> None: ...
    def sample_all(self) -> None: ...
    def fault(self, doing: str, exc: BaseException) -> None: ...

THREAD_NAME = "busmon.agent.listener"
#: what a dashboard may ask (nothing else is ever acted on)
REQUESTS = ("baseline", "verdict", "mark", "detach")
#: bytes held for a dashboard that is not reading; beyond it samples are dropped
MAX_BUFFER = 4 * 2**20
#: a request line longer than this is refused (the connection is closed)
MAX_REQUEST = 4096
#: how often the attached dashboard gets a sample of each loop
INTERVAL_S = 0.25
#: how long a connection may take to say hello
HELLO_S = 5.0


def peer_uid(conn: socket.socket) -> int | None:
    """The connecting process's user id, from the kernel (None where the OS will not say)."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid


class Listener:
    """The socket and its thread; ``put`` (any thread) hands an event to the dashboard, if any."""

    def __init__(self, agent: Served, path: Path, max_buffer: int = MAX_BUFFER) -> None:
        self.agent = agent
        self.max_buffer = max_buffer
        self.path = path
        self.refused = 0                   # connections refused (another user, a second dashboard)
        self.dropped = 0                   # samples not sent to a dashboard that did not keep up
        self._told_dropped = 0
        self._lock = threading.Lock()
        self._out = bytearray()
        self._client: socket.socket | None = None
        self._hello_by = 0.0
        self._ready = False                # the attached dashboard said hello
        self._inbox = b""
        self._encoder = Encoder()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stop = False
        self.faults = 0                    # turns of the thread that failed (busmon's bug, survived)
        self._sel = selectors.DefaultSelector()
        self._sock = self._bind(path)
        #: busmon's descriptors in the program (never counted as the program's)
        self._own_fds = (self._sock.fileno(), self._wake_r, self._wake_w)
        BUSMON_FDS.update(self._own_fds)
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()

    @staticmethod
    def _bind(path: Path) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if path.is_socket():
            path.unlink()  # a stale one of a program with this pid that is gone (this pid is ours now)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(2)
        sock.set_inheritable(False)
        return sock

    @property
    def attached(self) -> bool:
        return self._client is not None and self._ready

    # -- events out ----------------------------------------------------------------------------

    def put(self, event: Any) -> None:
        """An event for the dashboard (dropped at once when nobody is attached)."""
        if not self.attached:
            return
        with self._lock:
            if self._client is None or not self._ready:
                return
            if not isinstance(event, RunFinished) and len(self._out) > self.max_buffer:
                self.dropped += 1  # a sample, a mark: never a verdict
                return
            self._queue(event)
        self._wake()

    def _queue(self, event: Any) -> None:
        """An event's line onto what the dashboard is sent (the lock held)."""
        line = shown(self._encoder.encode(time.monotonic() - self.agent.channel.t0, event))
        self._out += (json.dumps(line, separators=(",", ":")) + "\n").encode()

    def _say(self, **fields: Any) -> None:
        with self._lock:
            self._out += agent_bytes(**fields)
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # already woken

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        sel = self._sel
        sel.register(self._sock, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        next_sample = time.monotonic()
        while not self._stop:
            try:
                next_sample = self._turn(next_sample)
            except Exception as exc:  # busmon's fault: that dashboard goes, the program and the socket stay
                self.faults += 1
                self.agent.fault("serving a dashboard", exc)
                self._drop_client("fault")

    def _turn(self, next_sample: float) -> float:
        """One wait on the socket(s), and what it brought; returns when to sample next."""
        sel = self._sel
        client = self._client
        if client is not None:
            sel.modify(client, selectors.EVENT_READ | (selectors.EVENT_WRITE if self._out else 0), "client")
        now = time.monotonic()
        timeout = max(0.0, next_sample - now) if self.attached else (
            max(0.0, self._hello_by - now) if client is not None else None)
        for key, mask in sel.select(timeout):
            if key.data == "accept":
                self._accept()
            elif key.data == "wake":
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            elif key.data == "client" and key.fileobj is self._client:
                if mask & selectors.EVENT_READ:
                    self._read()
                if self._client is not None and mask & selectors.EVENT_WRITE:
                    self._write()
        now = time.monotonic()
        if self._client is not None and not self._ready and now > self._hello_by:
            self._drop_client("no hello in time")
        if self.attached and now >= next_sample:
            self.agent.sample_all()
            if self.dropped != self._told_dropped:
                self._told_dropped = self.dropped
                self._say(dropped=self.dropped)
            next_sample = now + INTERVAL_S
        return next_sample

    def _accept(self) -> None:
        try:
            conn, _ = self._sock.accept()
        except OSError:
            return
        uid = peer_uid(conn)
        if uid is not None and uid != os.getuid():
            self.refused += 1  # another user's: not a word to it
            conn.close()
            return
        if self._client is not None:
            self.refused += 1
            try:
                conn.sendall(agent_bytes(error="a dashboard is attached to this program already"))
            except OSError:
                pass
            conn.close()
            return
        conn.setblocking(False)
        BUSMON_FDS.add(conn.fileno())
        self._client, self._ready, self._inbox = conn, False, b""
        self._sel.register(conn, selectors.EVENT_READ, "client")
        self._hello_by = time.monotonic() + HELLO_S

    def _read(self) -> None:
        client = self._client
        assert client is not None
        try:
            data = client.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the dashboard went (quit, or killed): free what was held for it
            self._drop_client("gone")
            return
        self._inbox += data
        while b"\n" in self._inbox and self._client is not None:
            line, self._inbox = self._inbox.split(b"\n", 1)
            self._request(line)
        if self._client is not None and len(self._inbox) > MAX_REQUEST:
            self._refuse(f"a request longer than {MAX_REQUEST} bytes")

    def _request(self, raw: bytes) -> None:
        try:
            req = json.loads(raw)
        except ValueError:
            req = None
        if not isinstance(req, dict):
            self._say(error="expected a JSON object per line")
            return
        if not self._ready:
            self._hello(req)
            return
        what = req.get("request")
        if what not in REQUESTS:
            self._say(error=f"unknown request {str(what)[:40]!r}: expected one of {', '.join(REQUESTS)}")
            return
        if what == "detach":
            self._drop_client("detached")
        elif what == "mark":
            name = req.get("name")
            self.agent.mark(name if isinstance(name, str) and name else "mark", None)
        elif what == "baseline":
            self.agent.baseline_all()
        elif what == "verdict":
            self.agent.verdict_all()

    def _refuse(self, message: str) -> None:
        """Say why (briefly, bounded) and let the connection go."""
        client = self._client
        if client is not None:
            try:
                client.setblocking(True)
                client.settimeout(1.0)
                client.sendall(agent_bytes(error=message))
            except OSError:
                pass
        self._drop_client("refused")

    def _hello(self, req: dict[str, Any]) -> None:
        if req.get("hello") != "busmon-attach":
            self._refuse("expected a busmon attach hello")
            return
        if req.get("version") != VERSION:
            self._refuse(f"this agent speaks version {VERSION} of busmon's attach protocol, the dashboard "
                         f"{req.get('version')}: use the same busmon for both")
            return
        # hello first, then what happened so far, and only then live events: the program's threads
        # put theirs as soon as ``_ready`` is seen, so it turns true under the lock, after these
        with self._lock:
            self._out += agent_bytes(**self.agent.facts(), attached=True)
            for event in self.agent.history():
                self._queue(event)
            self._ready = True
        self._wake()

    def _write(self) -> None:
        client = self._client
        assert client is not None
        with self._lock:
            data = bytes(self._out[:262144])
        try:
            sent = client.send(data)
        except BlockingIOError:
            return
        except OSError:
            self._drop_client("gone")
            return
        with self._lock:
            del self._out[:sent]

    def _drop_client(self, why: str) -> None:
        """Forget the dashboard and everything held for it; sampling stops with it."""
        client, self._client = self._client, None
        self._ready = False
        with self._lock:
            self._out = bytearray()
            self._encoder = Encoder()
        if client is not None:
            BUSMON_FDS.discard(client.fileno())
            try:  # before it closes: a new connection may get its number
                self._sel.unregister(client)
            except (KeyError, ValueError, OSError):
                pass
            try:
                client.close()
            except OSError:
                pass

    def forget_in_child(self) -> None:
        """In a forked child: its copies of the socket, the dashboard's connection and the wake
        pipe closed, nothing said (the thread did not survive the fork; the socket file stays
        the parent's)."""
        self._stop = True
        BUSMON_FDS.difference_update(self._own_fds)
        for f in (self._sock, self._client):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._client = None

    def close(self) -> None:
        """At the program's exit: say goodbye to the dashboard (what it was sent, it keeps),
        bounded, then take the socket away."""
        self._stop = True
        self._wake()
        self._thread.join(2.0)
        client = self._client if self._ready else None
        if client is not None:
            self._say(end=True, dropped=self.dropped)
            try:
                client.setblocking(True)
                client.settimeout(2.0)
                with self._lock:
                    data = bytes(self._out)
                client.sendall(data)
            except OSError:
                pass
        self._drop_client("exit")
        BUSMON_FDS.difference_update(self._own_fds)
        try:
            self._sock.close()
            self.path.unlink()
        except OSError:
            pass
