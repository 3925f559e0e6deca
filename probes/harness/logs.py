"""Client libraries' log lines, captured, counted and de-duplicated instead of sprayed.

A dead Kafka broker makes aiokafka log ``Unable connect to node …`` hundreds of times a
second; asyncio adds ``Task exception was never retrieved`` and ``Unclosed …`` at
exit. On a terminal that buries the one line that matters. So while busmon runs,
every record of level WARNING and up (INFO and up with a log file) is counted by
its logger's top package and its message template; the summary goes into the
report ("aiokafka: 1,203 × Unable connect to node with id 111: …"), and the full
lines go to a file only when one is asked for. Python warnings (``ResourceWarning``)
are routed through logging too, so they are counted rather than printed.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from busmon.bus.secrets import scrub

#: loggers turned up to INFO when a log file is asked for
LIBRARY_LOGGERS = ("aiokafka", "nats", "bus", "asyncio")


@dataclass(frozen=True, slots=True)
class LogLine:
    """One kind of log line: who said it, how bad, how often, and the first time's text."""

    logger: str
    level: str
    count: int
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"logger": self.logger, "level": self.level, "count": self.count, "message": self.message}

    def describe(self, width: int = 160) -> str:
        text = " ".join(self.message.split())
        if len(text) > width:
            text = text[: width - 1] + "…"
        return f"{self.logger}: {self.count:,} × {text}"


def _scrubbed(record: logging.LogRecord) -> logging.LogRecord:
    """A copy of ``record`` with its message (and traceback) formatted and scrubbed of secrets:
    a library may log a URL, an exception's text or a frame's locals."""
    copy = logging.makeLogRecord(record.__dict__)
    try:
        message = record.getMessage()
    except Exception:  # a library's bad format string
        message = str(record.msg)
    copy.msg, copy.args = scrub(message), None
    if record.exc_info:
        copy.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        copy.exc_info = None
    elif record.exc_text:
        copy.exc_text = scrub(record.exc_text)
    if record.stack_info:
        copy.stack_info = scrub(record.stack_info)
    return copy


class LogCapture(logging.Handler):
    """A root-logger handler that counts records by (top package, level, template)."""

    def __init__(self, path: Path | None = None) -> None:
        super().__init__(logging.INFO if path is not None else logging.WARNING)
        self.path = path
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._first: dict[tuple[str, str, str], str] = {}
        self._order: list[tuple[str, str, str]] = []
        self._lock_counts = threading.Lock()
        self._file: logging.FileHandler | None = None
        self._saved_levels: dict[str, int] = {}
        self._installed = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            key = (record.name.split(".")[0], record.levelname, scrub(str(record.msg)))
            with self._lock_counts:
                if key not in self._counts:
                    self._order.append(key)
                    self._first[key] = scrub(_one_line(record))
                self._counts[key] += 1
            if self._file is not None:
                self._file.emit(_scrubbed(record))
        except Exception:  # a log line must never break the run
            self.handleError(record)

    def install(self) -> LogCapture:
        """Capture from now on: this handler on the root logger, warnings routed to logging."""
        if self._installed:
            return self
        root = logging.getLogger()
        if self.path is not None:
            self.write_to(self.path)
        root.addHandler(self)
        logging.captureWarnings(True)
        self._installed = True
        return self

    def write_to(self, path: Path) -> None:
        """Also write every line in full (INFO and up from the client libraries) to ``path``."""
        self.path = path
        self.setLevel(logging.INFO)
        self._file = logging.FileHandler(path, encoding="utf-8")
        self._file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for name in LIBRARY_LOGGERS:
            lg = logging.getLogger(name)
            self._saved_levels.setdefault(name, lg.level)
            if lg.getEffectiveLevel() > logging.INFO:
                lg.setLevel(logging.INFO)

    def uninstall(self) -> None:
        if not self._installed:
            return
        logging.getLogger().removeHandler(self)
        logging.captureWarnings(False)
        for name, level in self._saved_levels.items():
            logging.getLogger(name).setLevel(level)
        if self._file is not None:
            self._file.close()
            self._file = None
        self._installed = False

    def __enter__(self) -> LogCapture:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    def reset(self) -> None:
        """Forget what was counted (a new command in the same process)."""
        with self._lock_counts:
            self._counts.clear()
            self._first.clear()
            self._order.clear()

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def summary(self, min_level: int = logging.WARNING) -> tuple[LogLine, ...]:
        """Each kind of line once (WARNING and up unless asked), most frequent first
        (ties: first seen first)."""
        with self._lock_counts:
            keys = [k for k in self._order if logging.getLevelName(k[1]) >= min_level]
            keys.sort(key=lambda k: -self._counts[k])
            return tuple(LogLine(k[0], k[1], self._counts[k], self._first[k]) for k in keys)


def _one_line(record: logging.LogRecord) -> str:
    try:
        text = record.getMessage()
    except Exception:  # a library's bad format string
        text = str(record.msg)
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        text = f"{text} ({type(exc).__name__}: {exc})"
    return " ".join(text.split())


#: the process's one capture: the command line installs it, the dashboard reads its summary
CAPTURE = LogCapture()
