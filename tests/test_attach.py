"""``busmon run --listen`` and ``busmon attach``: the dashboard on a running program, live.

The program is a real process started by ``busmon run --listen``; the dashboard attaches to
it through the agent's socket (Pilot drives it), or a raw client plays a misbehaving one. The
security cases (who may connect, what is acted on) and the faults (the program exits while
attached, a reader that stops, a dashboard killed) each have a test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from busmon.probes.agent.listener import Listener
from busmon.probes.agent.socket_dir import socket_dir
from busmon.probes.model import PhaseStarted
from busmon.tui.app import BusmonApp
from busmon.tui.attach import AgentConnection, AttachController, find_socket
from tests.run_programs import TIMEOUT_S, write
from tests.test_dashboard import until

PY = sys.executable

#: a service that keeps one task for its life (stopped at shutdown), starts another on each
#: SIGUSR1 (never stopped: the leak a dashboard's verdict should name) and ends on SIGTERM
SERVICE = """
    import asyncio, signal
    import busmon.agent

    async def job():
        await asyncio.Event().wait()

    async def main():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        extras = []
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, lambda: extras.append(
            asyncio.create_task(job(), name=f"extra-{len(extras) + 1}")))

        def burst():  # far more marks than a dashboard that does not read can be sent
            for i in range(2000):
                busmon.agent.mark(f"burst {i}")
            print("marked", flush=True)
        loop.add_signal_handler(signal.SIGUSR2, burst)
        kept = asyncio.create_task(job(), name="kept")
        busmon.agent.mark("ready")
        print("ready", flush=True)
        await stop.wait()
        kept.cancel()
        await asyncio.gather(kept, return_exceptions=True)
        print("stopped", flush=True)

    asyncio.run(main())
"""


class Program:
    """``busmon run --listen -- python service.py``, its pid once the agent said it listens."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        prog = write(tmp_path, "service.py", SERVICE)
        self.proc = subprocess.Popen([PY, "-m", "busmon", "run", "--listen", "--settle-timeout", "0.3", *extra, "--",
                                      PY, str(prog)], text=True, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.stderr: list[str] = []
        self.pid = 0
        self.terminated = False
        for line in self.proc.stderr:  # bounded by the test's timeout
            self.stderr.append(line)
            if "listening: busmon attach " in line:
                self.pid = int(line.split("busmon attach ")[1].split()[0])
                break
        assert self.pid, "".join(self.stderr)
        assert self.proc.stdout.readline() == "ready\n"

    def signal(self, sig: int) -> None:
        self.terminated |= sig == signal.SIGTERM  # once: a second one after asyncio.run() would kill it
        os.kill(self.pid, sig)

    def end(self) -> tuple[int, str, str]:
        """SIGTERM to the program; busmon run's exit code and output."""
        if self.proc.poll() is None and not self.terminated:
            self.signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=TIMEOUT_S)
        return self.proc.returncode, out, "".join(self.stderr) + err

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT_S)


@pytest.fixture
def program(tmp_path: Path):
    p = Program(tmp_path)
    yield p
    p.kill()


def _request(path: Path, *lines: dict, errors: int = 0) -> list[dict]:
    """A raw client: send ``lines``; the agent's answers until its hello and ``errors`` error
    lines have come (a closed connection ends it; a silent agent fails the read's timeout)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        f = s.makefile("rwb")
        for line in lines:
            f.write((json.dumps(line) + "\n").encode())
        f.flush()
        out: list[dict] = []
        while (raw := f.readline()):
            out.append(json.loads(raw))
            said = [x for x in out if x.get("format") == "busmon-agent"]
            if said and sum("error" in x for x in said) >= errors and ("error" in said[0] or said[0].get("attached")):
                break
        return out


HELLO = {"hello": "busmon-attach", "version": 1}


# -- the dashboard ------------------------------------------------------------------------------


async def test_the_dashboard_attaches_judges_marks_and_detaches_leaving_the_program_running(
        program: Program, tmp_path: Path) -> None:
    record = tmp_path / "attached.jsonl"
    from busmon.probes.recording.records import Header
    from busmon.probes.recording.writer import Recorder

    recorder = Recorder(record, Header("attach", {"name": "service"}, None, "", "test", "", "", ""))
    controller = AttachController(AgentConnection(find_socket(str(program.pid))), record=recorder.put)
    app = BusmonApp(controller)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.latest is not None, "a live sample")
        assert "ATTACHED pid" in app.state.attached and app.state.backend == "program"
        assert [s.phase for s in app.state.snapshots] == ["baseline", "ready"]  # what happened before we came
        await pilot.press("b")
        await until(pilot, lambda: app.state.run_index >= 2, "a new baseline")
        program.signal(signal.SIGUSR1)  # a task that nobody will stop
        await pilot.press("m")
        await until(pilot, lambda: any(s.phase == "mark 1" for s in app.state.snapshots), "the mark")
        await pilot.press("v")
        await until(pilot, lambda: bool(app.results), "the verdict")
        verdict = app.results[0]
        assert verdict.verdict == "leaked" and verdict.name.endswith("· verdict 1")
        leaked = [x for x in verdict.leftovers if x.state == "leaked"]
        assert [x.name for x in leaked] == ["extra-1"]
        assert leaked[0].created_at and "service.py" in leaked[0].created_at
        samples_before = app.state.latest
        await until(pilot, lambda: app.state.latest is not samples_before, "samples after the verdict")
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "q to detach")
    controller.shutdown()
    recorder.close(__import__("busmon.probes.recording.records", fromlist=["Ended"]).Ended(interrupted=False))
    assert not controller.program_ended
    assert program.proc.poll() is None  # detached: the program goes on
    # another dashboard may come now: what the first held was freed
    assert _request(find_socket(str(program.pid)), HELLO)[0]["attached"] is True
    code, out, err = program.end()
    assert out == "stopped\n"
    # at shutdown extra-1 is still there: busmon run's own verdict says so (the dashboard's
    # verdict was the dashboard's: not in busmon run's report)
    assert code == 1 and "leaked 1 task" in err and "extra-1" in err
    assert "verdict 1" not in err
    lines = record.read_text().splitlines()
    assert json.loads(lines[-1])["type"] == "ended"
    assert any('"type":"run_finished"' in line for line in lines)


async def test_the_program_exiting_while_attached_keeps_the_last_state(program: Program) -> None:
    controller = AttachController(AgentConnection(find_socket(str(program.pid))))
    app = BusmonApp(controller)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.latest is not None, "a live sample")
        program.signal(signal.SIGTERM)
        await until(pilot, lambda: app.done is not None, "the program's end seen")
        assert controller.program_ended and "exited: last state kept" in app.state.attached
        assert app.state.snapshots  # the panels keep what they showed
        assert app.state.note == "q quits"
        await pilot.press("q")
    controller.shutdown()
    code, out, err = program.end()
    assert code == 0 and "is clean" in err


def test_run_listen_says_how_to_attach_and_the_socket_is_private(program: Program) -> None:
    path = find_socket(str(program.pid))
    assert path.parent == socket_dir()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert any(f"busmon attach {program.pid}" in line for line in program.stderr)
    program.end()
    assert not path.exists()  # the agent takes its socket away at exit


# -- security -----------------------------------------------------------------------------------


def test_nothing_received_is_executed(program: Program, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = find_socket(str(program.pid))
    answers = _request(path, HELLO, {"request": "eval", "code": f"open({str(marker)!r}, 'w')"},
                       {"request": "__import__('os').system('touch x')"}, errors=2)
    errors = [a["error"] for a in answers if "error" in a]
    assert errors == ["unknown request 'eval': expected one of baseline, verdict, mark, detach",
                      "unknown request \"__import__('os').system('touch x')\": expected one of baseline, verdict, "
                      "mark, detach"]
    assert not marker.exists()
    # a client that does not say busmon's hello is told and let go
    assert _request(path, {"GET": "/"})[0]["error"] == "expected a busmon attach hello"


@pytest.mark.skipif(os.getuid() != 0, reason="connecting as another user needs root to switch users")
def test_a_peer_of_another_user_is_refused_by_its_credentials(program: Program, tmp_path: Path) -> None:
    # the private directory alone keeps others out; to reach the agent's own check, a link to
    # the socket in a directory anyone may enter, the socket opened to all (same inode)
    path = find_socket(str(program.pid))
    shared = Path(tempfile.mkdtemp(dir=path.parent.parent))  # beside the private directory: same file system
    shared.chmod(0o777)
    link = shared / "agent.sock"
    os.link(path, link)
    os.chmod(link, 0o666)
    code = textwrap.dedent(f"""
        import socket, json, os
        os.setgid(65534)
        os.setuid(65534)
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect({str(link)!r})
        try:
            s.sendall(json.dumps({HELLO!r}).encode() + b"\\n")
            print("answered" if s.recv(4096) else "refused")
        except (ConnectionResetError, BrokenPipeError):
            print("refused")
    """)
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "refused"  # closed without a word
    try:
        # the owner is still welcome
        assert _request(path, HELLO)[0]["attached"] is True
    finally:
        os.chmod(link, 0o600)  # the socket's own mode again (the link is the same inode)
        link.unlink()
        shared.rmdir()


def _busmon_attach(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "busmon", "attach", *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                          stdin=subprocess.DEVNULL)


def _one_line_2(out: subprocess.CompletedProcess, words: str) -> None:
    assert out.returncode == 2, out.stderr
    assert words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


def _serve_once(path: Path, answer: bytes) -> threading.Thread:
    """A socket that is not an agent's: it answers whatever it is sent with ``answer``."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_what_cannot_be_attached_to_is_one_line_and_exit_2(tmp_path: Path) -> None:
    _one_line_2(_busmon_attach(str(os.getpid())), "has no busmon agent listening")
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    _one_line_2(_busmon_attach(str(dead.pid)), "no such process")
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # the file stays, nobody listens
    _one_line_2(_busmon_attach(str(stale)), "a stale socket, nobody listens on it")
    (tmp_path / "plain").write_text("x")
    _one_line_2(_busmon_attach(str(tmp_path / "plain")), "not a socket")
    web = tmp_path / "web.sock"
    thread = _serve_once(web, b"HTTP/1.1 400 Bad Request\r\n\r\n")
    _one_line_2(_busmon_attach(str(web)), "not a busmon agent's socket")
    thread.join(10)
    newer = tmp_path / "newer.sock"
    thread = _serve_once(newer, b'{"format": "busmon-agent", "version": 99}\n')
    _one_line_2(_busmon_attach(str(newer)), "speaks version 99 of busmon's attach protocol")
    thread.join(10)


def test_a_second_dashboard_is_told_one_is_attached(program: Program) -> None:
    path = find_socket(str(program.pid))
    first = AgentConnection(path)
    try:
        _one_line_2(_busmon_attach(str(program.pid)), "a dashboard is attached to this program already")
    finally:
        first.close()


# -- faults ---------------------------------------------------------------------------------------


def test_a_reader_that_stops_never_blocks_the_program_and_drops_are_counted(tmp_path: Path) -> None:
    p = Program(tmp_path, "--listen-buffer", "65536")
    try:
        path = find_socket(str(p.pid))
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall((json.dumps(HELLO) + "\n").encode())
            # this dashboard reads nothing: 2,000 marks must not wait for it
            p.signal(signal.SIGUSR2)
            assert p.proc.stdout.readline() == "marked\n"
            p.signal(signal.SIGTERM)
            s.settimeout(TIMEOUT_S)
            received = b""
            while chunk := s.recv(65536):  # now it reads: what was kept, then the goodbye
                received += chunk
        code, out, err = p.end()
        assert code == 0 and out == "stopped\n", err
        lines = [json.loads(x) for x in received.splitlines() if x.strip()]
        dropped = max(line.get("dropped", 0) for line in lines)
        assert dropped > 0 and lines[-1] == {"format": "busmon-agent", "version": 1, "end": True, "dropped": dropped}
        kept = sum(1 for line in lines if line.get("type") == "snapshot" and line["phase"].startswith("burst"))
        assert 0 < kept < 2000  # as many as the buffer held; the rest counted as dropped
    finally:
        p.kill()


def test_a_dashboard_killed_is_noticed_and_what_it_held_is_freed(program: Program) -> None:
    path = find_socket(str(program.pid))
    code = (f"import socket, json, os, signal; s = socket.socket(socket.AF_UNIX); s.connect({str(path)!r}); "
            f"s.sendall(json.dumps({HELLO!r}).encode() + b'\\n'); s.recv(100); os.kill(os.getpid(), signal.SIGKILL)")
    killed = subprocess.run([PY, "-c", code], timeout=TIMEOUT_S)
    assert killed.returncode == -signal.SIGKILL
    # a new dashboard is welcome at once: the dead one's place and buffer were freed
    answers = _request(path, HELLO)
    assert answers[0]["attached"] is True
    code, out, err = program.end()
    assert code == 0 and "is clean" in err


async def test_attached_to_the_nats_sample_service_on_a_real_broker(nats_broker, tmp_path: Path) -> None:
    """The sample service, serving on nats-server: after its start-up a baseline (b), and after
    a while of requests a verdict (v): nothing piles up while it serves; then its own shutdown."""
    service = Path(__file__).resolve().parent.parent / "sample_configs" / "services" / "nats_responder.py"
    proc = subprocess.Popen([PY, "-m", "busmon", "run", "--listen", "--settle-timeout", "1", "--", PY, str(service),
                             "--server", nats_broker.url, "--requests", "20", "--forever"], text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pid = 0
        for line in proc.stderr:
            if "busmon attach " in line:
                pid = int(line.split("busmon attach ")[1].split()[0])
                break
        assert proc.stdout.readline() == "answered 20 of 20 requests\n"
        controller = AttachController(AgentConnection(find_socket(str(pid))))
        app = BusmonApp(controller)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: any(s.phase == "serving" for s in app.state.snapshots) or
                        app.state.phase == "serving", "the service serving")
            await pilot.press("b")
            await until(pilot, lambda: app.state.run_index >= 2 and app.state.latest is not None,
                        "a sample under the new baseline")
            first = app.state.latest
            # a few of its 50 ms requests answered under the new baseline
            await until(pilot, lambda: app.state.latest.t_s > first.t_s + 0.5, "half a second of serving")
            await pilot.press("v")
            await until(pilot, lambda: bool(app.results), "the verdict")
            assert app.results[0].verdict == "clean", [x for x in app.results[0].leftovers]
            await pilot.press("q")
        controller.shutdown()
        os.kill(pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT_S)
        assert proc.returncode == 0, err
        assert "is clean" in err
    finally:
        proc.kill()


def test_attach_hints_and_stale_sockets_are_removed(program: Program, tmp_path: Path) -> None:
    _one_line_2(_busmon_attach("abc"), "expected the program's pid (busmon run --listen prints it) or its socket's path")
    # busmon run's own pid: the program's is named
    _one_line_2(_busmon_attach(str(program.proc.pid)), f"that is busmon run itself; its program is pid {program.pid}")
    # an agent killed outright leaves its socket; the next agent to start clears it away
    gone = subprocess.Popen([PY, "-c", "pass"])
    gone.wait()
    stale = socket_dir() / f"{gone.pid}.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()
    (tmp_path / "second").mkdir()
    Program(tmp_path / "second").kill()  # its agent, starting to listen, cleared the stale socket
    assert not stale.exists()


def test_a_mark_named_start_is_only_a_mark(tmp_path: Path) -> None:
    prog = write(tmp_path, "start.py", """
        import asyncio
        import busmon.agent
        async def main():
            asyncio.create_task(asyncio.Event().wait(), name="early")
            busmon.agent.mark("start")
        asyncio.run(main())
    """)
    out = subprocess.run([PY, "-m", "busmon", "run", "--settle-timeout", "0.2", "--", PY, str(prog)],
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    assert out.returncode == 1 and "early" in out.stderr, out.stderr


async def test_a_password_in_a_task_name_never_reaches_the_dashboard(tmp_path: Path) -> None:
    prog = write(tmp_path, "secret.py", """
        import asyncio, signal
        async def main():
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            t = asyncio.create_task(asyncio.Event().wait(), name="conn nats://bob:s3cretpw@127.0.0.1:4222")
            print("ready", flush=True)
            await stop.wait()
            t.cancel()
        asyncio.run(main())
    """)
    proc = subprocess.Popen([PY, "-m", "busmon", "run", "--listen", "--settle-timeout", "0.2", "--", PY, str(prog)],
                            text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        pid = next(int(line.split("busmon attach ")[1].split()[0]) for line in proc.stderr if "busmon attach " in line)
        assert proc.stdout.readline() == "ready\n"
        controller = AttachController(AgentConnection(find_socket(str(pid))))
        app = BusmonApp(controller)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.state.latest is not None, "a live sample")
            await pilot.press("v")
            await until(pilot, lambda: bool(app.results), "the verdict")
            [left] = [x for x in app.results[0].leftovers if x.state == "leaked"]
            assert left.name == "conn nats://bob:***@127.0.0.1:4222"
            assert "s3cretpw" not in repr(app.state)  # what the panels are drawn from
        controller.shutdown()
        os.kill(pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT_S)
        assert "s3cretpw" not in "".join(line for line in err.splitlines(True) if line.startswith("busmon"))
    finally:
        proc.kill()


async def test_the_runs_screen_of_a_program_lists_its_verdicts_without_a_loads_columns(program: Program) -> None:
    from textual.widgets import DataTable

    controller = AttachController(AgentConnection(find_socket(str(program.pid))))
    app = BusmonApp(controller)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.state.latest is not None, "a live sample")
        for n in (1, 2):
            await pilot.press("v")
            await until(pilot, lambda: len(app.results) >= n, f"verdict {n}")
        await pilot.press("r")
        await until(pilot, lambda: bool(app.screen.query(DataTable)), "the runs screen")
        table = app.screen.query_one(DataTable)
        labels = [str(c.label) for c in table.columns.values()]
        assert labels == ["verdict of", "verdict", "Δ tasks", "left/exit", "settle ms", "verdict ms", "stalls"]
        assert table.row_count == 2
        await pilot.press("escape")
        await pilot.press("q")
    controller.shutdown()
    assert program.end()[0] == 0


class _BusyAgent:
    """What a listener serves, with a program that emits while the hello is being made: its
    ``facts()`` has another thread put an event (as a loop's phase starting would)."""

    def __init__(self) -> None:
        self.channel = type("Chan", (), {"t0": 0.0})()
        self.listener: Any = None
        self.put_returned = threading.Event()

    def facts(self) -> dict[str, Any]:
        def emit() -> None:
            self.listener.put(PhaseStarted("main", "load", 1.0))
            self.put_returned.set()
        threading.Thread(target=emit).start()
        # the racing put done before the hello is made (the old order sent its event first; now
        # it finds the dashboard not yet greeted and leaves the event to the history)
        self.put_returned.wait(TIMEOUT_S)
        return {"pid": os.getpid()}

    def history(self) -> list[Any]:
        return [PhaseStarted("main", "subscribe", 0.5)]

    def mark(self, name: str, opens: bool | None) -> None: ...
    def baseline_all(self) -> None: ...
    def verdict_all(self) -> None: ...
    def sample_all(self) -> None: ...
    def fault(self, doing: str, exc: BaseException) -> None: raise exc


def test_the_hello_comes_first_then_the_history_then_live_events(tmp_path: Path) -> None:
    """An event the program emits while a dashboard is being greeted never comes before the
    hello (it did once, and the dashboard took the agent for something else): until the history
    is told, what happens is the history's to tell; after it, live events follow it."""
    agent = _BusyAgent()
    agent.listener = listener = Listener(agent, tmp_path / "a.sock")
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(TIMEOUT_S)
            s.connect(str(tmp_path / "a.sock"))
            f = s.makefile("rwb")
            f.write((json.dumps(HELLO) + "\n").encode())
            f.flush()
            lines = [json.loads(f.readline()) for _ in range(2)]
            listener.put(PhaseStarted("main", "close", 2.0))  # live, once greeted
            lines.append(json.loads(f.readline()))
    finally:
        listener.close()
    assert agent.put_returned.is_set()
    assert lines[0].get("attached") is True, lines
    # the racing event came before the greeting was done: what it said is the history's to tell
    assert [(x.get("type"), x.get("phase")) for x in lines[1:]] == [
        ("phase_started", "subscribe"), ("phase_started", "close")]
