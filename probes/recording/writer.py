"""Writing a recording: the arena's events, timed, as JSON lines, from a thread of its own.

``put`` is what the arena thread calls for every event: it stamps the time and hands the event
to a queue (no I/O, no encoding, no lock the loop could wait on). Every ``BATCH_S`` the writer
thread encodes, scrubs secrets (the same scrubbing every other output gets) and writes whatever
has queued up as one batch, then flushes: a busmon killed mid-run leaves every batch before it
readable (a ``.gz`` file is flushed to a gzip sync point, so its prefix decompresses).
"""

from __future__ import annotations

import gzip
import io
import json
import queue
import threading
import time
from pathlib import Path
from typing import IO, Any

from busmon.bus.secrets import scrub_tree
from busmon.probes.recording.codec import Encoder, encode_header
from busmon.probes.recording.records import Ended, Header

#: busmon's own words in a record: never scrubbed (a password that is also "leaked" or "load"
#: must not change what the file says), as in the JSON report
FIXED_FIELDS = frozenset({"type", "format", "backend", "verdict", "state", "kind", "phase", "level", "command"})
_STOP = object()
#: how often the writer thread writes what has queued up: what a busmon killed mid-run can lose
BATCH_S = 0.5


def open_for_writing(path: Path) -> IO[str]:
    """The file as text: gzip-compressed when its name ends in ``.gz``."""
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.GzipFile(path, "wb", compresslevel=6), encoding="utf-8", newline="\n")
    return open(path, "w", encoding="utf-8", newline="\n")


class Recorder:
    """Records events to ``path``; ``put`` from any thread, ``close`` once at the end."""

    def __init__(self, path: Path, header: Header) -> None:
        self.path = path
        self.error: str | None = None       # why recording stopped early (a full disk), if it did
        self.lines = 0
        self._t0 = time.monotonic()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._file = open_for_writing(path)  # the caller checked the path: an error here is the disk's
        self._encoder = Encoder()
        self._write_lines([encode_header(header)])
        self._wake = threading.Event()       # close(): write what is left now
        self._thread = threading.Thread(target=self._run, name="busmon.recorder", daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, event: Any) -> None:
        """Record ``event`` now (thread-safe, never blocks)."""
        self._queue.put((time.monotonic() - self._t0, event))

    def close(self, ended: Ended, timeout: float = 10.0) -> None:
        """Write the last line, flush and close; bounded (a stuck disk does not hold busmon)."""
        if self._closed:
            return
        self._closed = True
        self.put(ended)
        self._queue.put(_STOP)
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.error = self.error or f"writing {self.path} did not finish within {timeout:g} s"

    def _run(self) -> None:
        stop = False
        while not stop:
            # woken every BATCH_S, not by each event: a thread woken 10 times a second would take
            # the interpreter from the loop it records as often (measured: pairs down to 0.68)
            self._wake.wait(BATCH_S)
            batch = []
            while True:  # everything queued since: one write, one flush
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            lines = []
            for item in batch:
                if item is _STOP:
                    stop = True
                    break
                t, event = item
                lines.append(self._encoder.encode(t, event))
            if lines and self.error is None:
                self._write_lines(lines)
        try:
            self._file.close()
        except OSError as exc:
            self.error = self.error or f"cannot write {self.path}: {exc.strerror or exc}"

    def _write_lines(self, lines: list[dict[str, Any]]) -> None:
        try:
            text = "".join(json.dumps(scrub_tree(line, FIXED_FIELDS), separators=(",", ":")) + "\n"
                           for line in lines)
            self._file.write(text)
            self._file.flush()
            self.lines += len(lines)
        except OSError as exc:  # a full disk: the run goes on, the recording stops and says why
            self.error = f"cannot write {self.path}: {exc.strerror or exc}"
