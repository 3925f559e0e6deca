"""Misbehaving adapters: every call into a bus is bounded, the stuck stack is reported, the bus
is still closed, settled and judged, and busmon itself always ends."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from busmon.probes.model import RunResult
from busmon.probes.harness.scenario import parse_scenario
from busmon.probes.harness.session import Session

ROOT = Path(__file__).resolve().parents[1]
DEADLINES = "[deadlines]\nstart_s = 0.5\nsubscribe_s = 0.5\nclose_s = 0.5\n"


def play(bus: str, *, load_s: float = 1.0, settle_s: float = 0.3, messages: int = 500,
         options: str = "") -> tuple[RunResult, float]:
    text = (f'name = "t"\nbackend = "tests.leaky_buses:{bus}"\n{options}\n{DEADLINES}'
            f'[probes]\nsettle_timeout_s = {settle_s}\ninterval_ms = 50\n'
            f'[defaults]\nkeys = 10\nload_timeout_s = {load_s}\n[[runs]]\nname = "r"\nmessages = {messages}\n')
    sc = parse_scenario(text, "stuck.toml")
    t0 = time.monotonic()
    with Session(sc, lambda event: None) as session:
        (run,) = session.play().runs
    return run, time.monotonic() - t0


@pytest.mark.parametrize("bus, phase, where", [
    ("StuckStart", "create", "leaky_buses.py"),
    ("StuckSubscribe", "subscribe", "leaky_buses.py"),
    ("StuckClose", "close", "_flush_that_never_ends"),
])
def test_a_stuck_call_fails_the_run_at_its_deadline_with_the_stuck_stack(bus, phase, where):
    run, elapsed = play(bus)
    assert run.verdict == "failed"
    assert run.failure["phase"] == phase and run.failure["kind"] == "deadline"
    assert run.failure["deadline_s"] == 0.5
    assert any(where in line for line in run.failure["stack"]), run.failure["stack"]
    assert run.failure["component"] == "tests"
    assert "did not return within 0.5 s" in run.error and "stuck at tests/leaky_buses.py" in run.error
    # still closed (bounded), settled and judged: the phases go on to the end
    assert [p.phase for p in run.phases][-2:] == ["close", "settle"]
    assert elapsed < 0.5 + 0.5 + 0.3 + 2.5, elapsed


def test_a_publish_that_blocks_forever_ends_at_the_load_deadline():
    run, elapsed = play("StuckPublish", options="[bus]\nafter = 100")
    assert run.verdict == "failed" and run.failure["phase"] == "load"
    assert "publishing did not finish within 1 s (100 of 500 published" in run.error
    assert any("_forever" in line for line in run.failure["stack"])
    assert run.delivery["received"] == 100  # what got through before the fault is kept
    assert elapsed < 1.0 + 0.5 + 0.3 + 2.5, elapsed


def test_a_close_that_ignores_cancellation_is_abandoned_and_judged_leaked():
    run, elapsed = play("StubbornClose")
    assert run.verdict == "failed" and run.failure["phase"] == "close"
    assert "ignored cancellation and was abandoned" in run.error
    (left,) = [x for x in run.leftovers if x.state == "leaked"]
    assert left.name == "close() (ignored cancellation)" and left.component == "tests"
    assert any("_refuse_cancellation" in line for line in left.stack)
    assert elapsed < 0.5 + 1.0 + 0.3 + 3.5, elapsed


def test_a_dying_worker_fails_the_load_at_once_not_at_its_deadline():
    run, elapsed = play("DyingWorker", load_s=30.0, messages=2000)
    assert run.verdict == "failed" and run.failure["kind"] == "fault"
    assert "worker bus.pool.worker-255 was cancelled by someone else" in run.error
    assert elapsed < 5.0, elapsed  # far below the 30 s load deadline


def cli(*args: str, timeout: float = 30) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "busmon", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.monotonic() - t0


@pytest.mark.parametrize("bus, leftover", [
    ("StubbornLeak", "bus.stubborn.pinger"),
    ("NonDaemonThreadLeak", "stubborn-poller"),
])
def test_busmon_exits_whatever_the_bus_left_behind(bus, leftover, tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'{DEADLINES}[probes]\nsettle_timeout_s = 0.2\n[[runs]]\nname = "r"\nmessages = 100\n')
    report = tmp_path / "r.json"
    proc, elapsed = cli("play", str(scenario), "--headless", "--bus", f"tests.leaky_buses:{bus}",
                        "--report", str(report))
    assert proc.returncode == 1, proc.stderr
    assert leftover in proc.stdout
    doc = json.loads(report.read_text())
    assert [x["name"] for x in doc["runs"][0]["leftovers"] if x["state"] == "leaked"] == [leftover]
    # the process ends within 2 s of the verdict (startup and the run take the rest), and says
    # what refused to stop
    assert elapsed < 8, elapsed
    assert "refused to stop" in proc.stderr and leftover in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_busmon_exits_past_a_stuck_executor_job(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text('[probes]\nsettle_timeout_s = 0.2\n[[runs]]\nname = "r"\nmessages = 100\n')
    proc, elapsed = cli("play", str(scenario), "--headless", "--bus", "tests.leaky_buses:StuckExecutorJob")
    assert proc.returncode in (0, 1), proc.stderr
    assert elapsed < 8, elapsed
    assert "refused to stop" in proc.stderr and "asyncio_" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_ctrl_c_writes_the_partial_report_and_exits_130(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text('[probes]\nsettle_timeout_s = 0.3\n[defaults]\nrate_per_s = 2000\n'
                        '[[runs]]\nname = "first"\nmessages = 100000\n[[runs]]\nname = "never"\nmessages = 10\n')
    report = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "busmon", "play", str(scenario), "--headless", "--bus",
                             "tests.leaky_buses:Announcer", "--report", str(report)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "publishing" in proc.stdout.readline()  # the load is under way
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    doc = json.loads(report.read_text())
    assert doc["interrupted"] is True
    (run,) = doc["runs"]  # the second run never started
    assert run["name"] == "first" and run["verdict"] == "interrupted" and doc["verdict"] == "interrupted"
    assert "interrupted" in run["error"] and run["failure"]["phase"] == "load"
    assert [p["phase"] for p in run["phases"]][-2:] == ["close", "settle"]  # closed and settled
    assert 0 < run["delivery"]["published"] < 100000
    assert "interrupted" in err and "Traceback" not in err
