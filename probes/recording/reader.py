"""Reading a recording back: the header at once, the events as they are needed.

What cannot be replayed at all (not a recording, empty, a newer format, unreadable) is a
:class:`RecordingError`, one line naming the file. What can, is: a damaged line is skipped and
noted (``FILE:LINE: what is wrong``), and a file that stops mid-line or without its ``ended``
line was cut short (busmon was killed while recording): everything before the cut replays.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator

from busmon.probes.recording.codec import DamagedLine, Decoder, read_header
from busmon.probes.recording.records import VERSION, Ended, Header

#: said where a recording stops without its last line
CUT_SHORT = "recording ends here: busmon stopped while recording"
#: damaged lines named one by one, then counted
MAX_PROBLEMS = 20
#: how much of a plain file's end is read to find its last event's time
TAIL_BYTES = 256 * 1024


class RecordingError(Exception):
    """The file cannot be replayed at all: one line, naming the file."""


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _open(path: Path) -> IO[str]:
    raw: IO[bytes] = gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="\n")


@dataclass
class Recording:
    """An opened recording: its header, and its events read on demand (once, in order)."""

    path: Path
    header: Header
    compressed: bool
    problems: list[str] = field(default_factory=list)   # damaged lines, each 'FILE:LINE: what'
    damaged: int = 0
    ended: Ended | None = None
    cut_short: bool = False                             # stopped mid-line or without 'ended'
    _file: IO[str] | None = None
    _lineno: int = 1

    def events(self) -> Iterator[tuple[float, Any]]:
        """``(t, event)`` in recorded order; ``ended`` and ``cut_short`` are set once exhausted."""
        decoder = Decoder()
        f = self._file
        if f is None:
            return
        try:
            for raw in f:
                self._lineno += 1
                if not raw.endswith("\n"):  # only the last line can lack it: being written when busmon stopped
                    self.cut_short = True
                    break
                if not raw.strip():
                    continue
                try:
                    t, event = decoder.decode(json.loads(raw))
                except json.JSONDecodeError as exc:
                    self._note(self._lineno, f"not JSON ({exc.msg} at column {exc.colno})")
                    continue
                except (DamagedLine, RecursionError) as exc:
                    self._note(self._lineno, str(exc) if isinstance(exc, DamagedLine) else "nested too deeply")
                    continue
                if isinstance(event, Ended):
                    self.ended = event
                    continue
                yield t, event
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError):
            self.cut_short = True  # a .gz cut mid-block (killed), or the disk failed mid-read
        finally:
            f.close()
            self._file = None
        if self.ended is None:
            self.cut_short = True

    def _note(self, lineno: int, what: str) -> None:
        self.damaged += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{self.path}:{lineno}: {what}")

    def problem_lines(self) -> list[str]:
        """The damaged lines as said to a person: each, then how many more."""
        more = self.damaged - len(self.problems)
        return self.problems + ([f"{self.path}: {more:,} more damaged lines"] if more > 0 else [])

    def duration_hint(self) -> float | None:
        """The last event's time, read from the end of a plain file (None for a .gz file, or
        when the end holds no event): a one-hour recording says its length without being read."""
        if self.compressed:
            return None
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - TAIL_BYTES))
                tail = f.read().decode("utf-8", "replace")
        except OSError:
            return None
        return _last_time(tail.splitlines())

    def scan_duration(self) -> float | None:
        """The last event's time of any recording: a .gz one is decompressed once to its end (no
        line parsed but the last few); for a thread that has the time."""
        if not self.compressed:
            return self.duration_hint()
        last: list[str] = []
        try:
            with _open(self.path) as f:
                for line in f:
                    last.append(line)
                    if len(last) > 64:
                        del last[:32]
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError):
            pass  # cut short: the last complete lines read are the length
        return _last_time(last)


def _last_time(lines: list[str]) -> float | None:
    """The time of the last line of ``lines`` that is an event."""
    for line in reversed(lines):
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict) and type(obj.get("t")) in (int, float) and "type" in obj:
            return float(obj["t"])
    return None


def open_recording(path: Path, newest: int = VERSION) -> Recording:
    """Open ``path`` and read its header; RecordingError (one line) when it is no recording this
    busmon can replay."""
    def fail(message: str) -> RecordingError:
        return RecordingError(f"{path}: {message}")

    try:
        if path.is_dir():
            raise fail("expected a recording file, got a folder")
        compressed = _is_gzip(path)
        f = _open(path)
    except FileNotFoundError:
        raise fail("no such file") from None
    except OSError as exc:
        raise fail(f"cannot read it: {exc.strerror or exc}") from None
    try:
        first = f.readline()
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
        f.close()
        raise fail(f"cannot read it: {exc}") from None
    if not first.strip():
        f.close()
        raise fail("empty: not a busmon recording")
    try:
        line = json.loads(first)
    except (ValueError, RecursionError):
        f.close()
        raise fail("not a busmon recording (its first line is not JSON)") from None
    try:
        header = read_header(line, newest, fail)
    except RecordingError:
        f.close()
        raise
    return Recording(path, header, compressed, _file=f)
