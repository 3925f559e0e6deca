"""``busmon run -- python app.py``: start a program with busmon's agent in it, and hear its verdict.

The program is started as it would be (same stdin, stdout, stderr, working directory and
environment, plus two variables its agent takes away before the program's first line), with
a pipe on which its agent writes events in the recording's vocabulary. This side reads them,
tells the marks and the verdict on stderr, records them (``--record``), and when the program
has exited writes the reports and says the exit code: the program's own if it failed, else 1
if it left something behind, else 0. Signals sent to busmon are passed to the program.
Textual-free.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import busmon.probes.agent as agent_package
from busmon.probes.agent import channel as wire
from busmon.probes.agent.config import ENV, AgentConfig
from busmon.probes.agent.socket_dir import socket_path
from busmon.probes.model import RunFinished, RunResult, ScenarioResult
from busmon.probes.recording.codec import Decoder, DamagedLine

#: the folder whose sitecustomize starts the agent
BOOT = Path(agent_package.__file__).resolve().parent / "boot"
#: how long the channel may stay open after the program exited (its last lines in flight)
DRAIN_S = 5.0
#: the same signal twice within this is one (passed on once)
SAME_SIGNAL_S = 1.0
#: signals passed on to the program (SIGINT too, unless a terminal sent it to both already)
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)


class NotAProgram(ValueError):
    """The command cannot carry busmon's agent (not a Python program): one line, exit 2."""


def python_command(argv: list[str]) -> str:
    """The program's executable, checked to be a Python interpreter or a script that runs one
    (its ``#!`` line names python); the reason in one line otherwise."""
    if not argv:
        raise NotAProgram("give the program to run after --, e.g. busmon run -- python app.py")
    exe = shutil.which(argv[0])
    if exe is None and os.path.isfile(argv[0]):
        raise NotAProgram(f"{argv[0]} is not executable: run it with its interpreter (busmon run -- python "
                          f"{argv[0]})")
    if exe is None:
        raise NotAProgram(f"{argv[0]}: no such program (not a file, not on PATH)")
    name = os.path.basename(exe)
    if name.startswith(("python", "pypy")):
        _refuse_isolation(argv[0], argv[1:])
        return exe
    try:
        with open(exe, "rb") as f:
            first = f.readline(256)
    except OSError as exc:
        raise NotAProgram(f"{argv[0]}: cannot read it: {exc.strerror or exc}") from None
    if first.startswith(b"#!") and b"python" in first:
        _refuse_isolation(argv[0], first[2:].decode(errors="replace").split()[1:])
        return exe
    raise NotAProgram(f"{argv[0]} is not a Python program (expected python, or a script "
                      "whose #! line runs python): busmon's agent lives in a Python interpreter")


#: the interpreter's options that keep busmon's agent out (no PYTHONPATH, no site import)
ISOLATING = {"I": "-I (isolated)", "E": "-E (ignores PYTHONPATH)", "S": "-S (no site import)"}
#: options that take a value (the next word when not attached)
_WITH_VALUE = ("X", "W", "Q")


def _refuse_isolation(program: str, options: list[str]) -> None:
    """The interpreter's options up to the script (``-c``, ``-m`` or a file): one that keeps the
    agent out is refused before the program runs, not found out after it ran unwatched."""
    words = iter(options)
    for word in words:
        if word == "-" or not word.startswith("-") or word.startswith("--"):
            return  # the script, stdin, or a long option (--help, --version): the options end here
        letters = word[1:]
        for i, letter in enumerate(letters):
            if letter in ISOLATING:
                raise NotAProgram(f"{program} {word}: {ISOLATING[letter]} keeps busmon's agent out; run it "
                                  "without that option")
            if letter in ("c", "m"):
                return
            if letter in _WITH_VALUE:
                if i == len(letters) - 1:
                    next(words, None)
                break


def _where_busmon_is() -> tuple[str, ...]:
    """The folders this busmon and its dependencies import from, for a program whose Python
    lacks busmon (added at the end of its path: the program's own packages come first)."""
    paths = []
    for module in ("busmon", "psutil"):
        mod = sys.modules.get(module) or __import__(module)
        file = getattr(mod, "__file__", None)
        if file:
            paths.append(str(Path(file).resolve().parent.parent))
    return tuple(dict.fromkeys(paths))


@dataclass
class Heard:
    """What the agent said: its hello, its results, the lines to say, how it ended."""

    hello: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    results: list[RunResult] = field(default_factory=list)
    ended: bool = False                 # the agent said goodbye (its last lines all arrived)
    dropped: int = 0                    # samples the agent dropped for a slow reader
    damaged: int = 0                    # lines this busmon could not read


class ChannelReader:
    """Reads the agent's pipe on a thread of its own; every event goes to ``on_event``."""

    def __init__(self, fd: int, on_event: Callable[[Any], None], on_line: Callable[[str, str], None]) -> None:
        self.heard = Heard()
        self._file = os.fdopen(fd, "rb")
        self._on_event = on_event
        self._on_line = on_line
        self._decoder = Decoder()
        self._thread = threading.Thread(target=self._run, name="busmon.run.channel", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        with self._file:
            for raw in self._file:
                try:
                    line = json.loads(raw)
                except ValueError:
                    self.heard.damaged += 1
                    continue
                if isinstance(line, dict) and line.get("format") == wire.FORMAT:
                    self._agent_line(line)
                    continue
                try:
                    _, event = self._decoder.decode(line)
                except DamagedLine:
                    self.heard.damaged += 1
                    continue
                if isinstance(event, RunFinished):
                    self.heard.results.append(event.result)
                self._tell(self._on_event, event)

    @staticmethod
    def _tell(fn: Callable[..., None], *args: Any) -> None:
        """Hand on what was heard; a listener's failure (stderr closed) never stops the reading:
        the verdict still arrives and decides the exit code."""
        try:
            fn(*args)
        except (Exception, SystemExit):  # rich ends a write to a closed pipe with SystemExit
            pass

    def _agent_line(self, line: dict[str, Any]) -> None:
        h = self.heard
        if "error" in line:
            h.errors.append(str(line["error"]))
            self._tell(self._on_line, "error", str(line["error"]))
        elif "note" in line:
            h.notes.append(str(line["note"]))
            self._tell(self._on_line, "note", str(line["note"]))
        elif line.get("end"):
            h.ended, h.dropped = True, int(line.get("dropped") or 0)
        elif h.hello is None:
            if line.get("version") != wire.VERSION:
                h.errors.append(f"the program's busmon agent speaks version {line.get('version')} of the "
                                f"channel, this busmon {wire.VERSION}: install the same busmon in both")
            h.hello = line
            if line.get("metrics"):
                self._tell(self._on_line, "listening", f"metrics: {line['metrics']}")
            if line.get("listening"):
                self._tell(self._on_line, "listening", f"listening: busmon attach {line.get('pid')}  "
                                                       f"(socket {line['listening']})")


@dataclass(frozen=True)
class RunOptions:
    """``busmon run``'s options, as the agent needs them."""

    label: str
    baseline_at: str | None = None
    baseline_after_s: float | None = None
    verdict_at: str | None = None
    settle_timeout_s: float = 5.0
    stall_ms: int = 250
    trace_creation: bool = True
    ignore_tasks: tuple[str, ...] = ()
    ignore_threads: tuple[str, ...] = ()
    listen: bool = False
    listen_buffer: int = 4 * 2**20
    retained: bool = False
    metrics_host: str | None = None
    metrics_port: int | None = None
    metrics_top: int = 20
    metrics_linger_s: float = 0.0


@dataclass
class ProgramOutcome:
    returncode: int
    heard: Heard
    drained: bool                      # the channel closed after the program exited
    label: str = ""

    @property
    def result(self) -> ScenarioResult:
        return ScenarioResult(self.label, tuple(self.heard.results))  # as a replay of its recording names it

    @property
    def leaked(self) -> bool:
        return any(r.verdict == "leaked" for r in self.heard.results)

    @property
    def exit_code(self) -> int:
        """The program's own code if it failed (128 + N for a signal N), else 1 for a leak, else 0."""
        if self.returncode < 0:
            return 128 - self.returncode
        if self.returncode:
            return self.returncode
        return 1 if self.leaked else 0


def environment(options: RunOptions, fd: int) -> dict[str, str]:
    """The program's environment: its own, plus the agent's folder first on PYTHONPATH and
    the agent's configuration (both put back by the agent before the program's first line)."""
    env = dict(os.environ)
    own = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(BOOT) + (os.pathsep + own if own else "")
    config = AgentConfig(channel_fd=fd, pythonpath=own, sys_path=_where_busmon_is(), **vars(options))
    env[ENV] = config.to_env()
    return env


def run_program(argv: list[str], options: RunOptions, on_event: Callable[[Any], None],
                on_line: Callable[[str, str], None]) -> ProgramOutcome:
    """Start ``argv`` with the agent, pass signals on, wait for it; the channel is read meanwhile."""
    python_command(argv)
    read_fd, write_fd = os.pipe()
    os.set_inheritable(write_fd, True)
    started: list[subprocess.Popen] = []
    # a terminal's foreground job: the program shares busmon's process group (it may read the
    # terminal, and a Ctrl-C reaches both). Otherwise (CI, a pipe, a service manager) it gets a
    # group of its own, so a signal to busmon's group (kill -INT -PGID, timeout -s INT) reaches
    # it once, passed on by busmon, not twice: asyncio turns a second SIGINT into a
    # KeyboardInterrupt wherever the program then is, the verdict included
    shares_terminal = _terminal_sent_it()
    # handlers first: a signal busmon ignores would be ignored by the program too (exec keeps
    # SIG_IGN), and asyncio.run() then would not turn Ctrl-C into KeyboardInterrupt
    previous = _pass_signals_to(started, shares_terminal)
    try:
        try:
            proc = subprocess.Popen(argv, env=environment(options, write_fd), pass_fds=(write_fd,),
                                    process_group=None if shares_terminal else 0)
        except OSError as exc:
            os.close(read_fd)
            raise NotAProgram(f"{argv[0]}: cannot start it: {exc.strerror or exc}") from None
        finally:
            os.close(write_fd)
        started.append(proc)
        reader = ChannelReader(read_fd, on_event, on_line)
        returncode = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    drained = reader.join(DRAIN_S)
    if options.listen:  # killed outright, the program's agent could not take its socket away
        try:
            socket_path(proc.pid).unlink(missing_ok=True)
        except OSError:
            pass
    return ProgramOutcome(returncode, reader.heard, drained, label=options.label)


def _pass_signals_to(started: list[subprocess.Popen], shares_terminal: bool) -> dict[int, Any]:
    """While the program runs, a signal to busmon is the program's, passed on once: a terminal's
    Ctrl-C reaches both already (not sent again), and the same signal twice within
    :data:`SAME_SIGNAL_S` is one (``timeout`` signals busmon, then its process group)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    last: dict[int, float] = {}

    def forward(sig: int, _frame: Any) -> None:
        if not started or sig == signal.SIGINT and shares_terminal and _terminal_sent_it():
            return
        now = time.monotonic()
        if now - last.get(sig, -SAME_SIGNAL_S) < SAME_SIGNAL_S:
            return
        last[sig] = now
        try:
            started[0].send_signal(sig)
        except OSError:
            pass

    previous = {}
    for sig in FORWARDED:
        try:
            previous[sig] = signal.signal(sig, forward)
        except (OSError, ValueError):
            pass
    return previous


def _terminal_sent_it() -> bool:
    """A Ctrl-C typed at the terminal goes to its whole foreground process group: the program,
    in busmon's group, has it already."""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False
