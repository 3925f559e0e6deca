"""Broker faults on the real brokers: killed, stopped, killed before close, down at start.

Each test starts its own broker (it is going to hurt it), plays a paced run through the
real command line, hurts the broker by PID once deliveries are flowing (an event from
the playback, not a timer), and asserts: exit code 3, the time bound, the report on disk
with the broker named, the deliveries that got through, and a quiet stderr.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from busmon.probes.model import PhaseStarted, Sample
from tests.brokers import Broker, free_port, nats_server, tansu
from busmon.tui import cli

# small deadlines keep every case within seconds: load 4 s, close 3 s, settle 1 s
LOAD_S, CLOSE_S, SETTLE_S = 4.0, 3.0, 1.0
SCENARIO = """
name = "fault"
backend = "{backend}"
url = "{url}"
{bus}
[deadlines]
start_s = 3
subscribe_s = 8
close_s = {close}
[probes]
interval_ms = 50
settle_timeout_s = {settle}
[defaults]
topics = 2
keys = 20
load_timeout_s = {load}
[[runs]]
name = "r"
messages = 200000
rate_per_s = 5000
"""
BUS_OPTIONS = {
    "kafka": "[bus]\nconnect_timeout = 2\nclose_timeout = 2\ndrain_timeout = 1\n",
    "nats": "[bus]\nconnect_timeout = 2\nclose_timeout = 2\ndrain_timeout = 1\n",
    "nats-js": "[bus]\nconnect_timeout = 2\nclose_timeout = 2\ndrain_timeout = 1\n"
               "[bus.nats-js]\nstorage = \"memory\"\npublish_stall_timeout = 1\n",
}
# quiet stderr: none of these may reach the terminal (a library's repeated line is summarised once)
NOISE = ("Traceback", "was never retrieved", "Unclosed", "Task was destroyed", "ERROR ", "WARNING ")


def quiet(err: str) -> bool:
    return not any(n in err for n in NOISE) and err.count("Unable connect") <= 1


def scenario_file(tmp_path: Path, backend: str, url: str) -> Path:
    path = tmp_path / "fault.toml"
    path.write_text(SCENARIO.format(backend=backend, url=url, bus=BUS_OPTIONS[backend], load=LOAD_S,
                                    close=CLOSE_S, settle=SETTLE_S))
    return path


def broker_for(backend: str):
    return tansu() if backend == "kafka" else nats_server()


def url_of(backend: str, broker: Broker) -> str:
    return broker.url.replace("nats://", "nats+js://") if backend == "nats-js" else broker.url


def play(args: list[str], monkeypatch, capfd, on_event=None) -> tuple[int, str, str, float]:
    """The real command line, in process, with a hook on the playback's events."""
    if on_event is not None:
        from busmon.tui import headless

        original = headless.show_event

        def spy(event, *rest):
            on_event(event)
            return original(event, *rest)

        monkeypatch.setattr(headless, "show_event", spy)
    monkeypatch.setattr(sys, "argv", ["busmon", *args])
    t0 = time.monotonic()
    with pytest.raises(SystemExit) as info:
        cli.main()
    elapsed = time.monotonic() - t0
    out, err = capfd.readouterr()
    return info.value.code, out, err, elapsed


def when_delivering(act):
    """Call ``act`` once, as soon as the run has delivered a first share of its envelopes."""
    fired = []

    def on_event(event):
        if not fired and isinstance(event, Sample) and event.phase == "load" and event.delivered >= 2000:
            fired.append(True)
            act()
    return on_event, fired


def assert_failed_report(tmp_path: Path, what: str, *, delivered: bool = True) -> dict:
    doc = json.loads((tmp_path / "r.json").read_text())
    (run,) = doc["runs"]
    assert doc["verdict"] == "failed" and run["verdict"] == "failed"
    assert what in run["error"], run["error"]
    assert run["failure"]["phase"] in ("create", "load", "close")
    assert [p["phase"] for p in run["phases"]][-2:] == ["close", "settle"]
    if delivered:
        assert run["delivery"]["received"] >= 2000, run["delivery"]
        assert run["throughput"]["deliver_per_s"] > 0
    assert what in (tmp_path / "r.md").read_text()  # every format asked for is written
    return run


BACKENDS = ["kafka", "nats", "nats-js"]


def REPORTS(tmp_path: Path) -> list[str]:
    return ["--report", str(tmp_path / "r.json"), "--report", str(tmp_path / "r.md")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_broker_killed_mid_load_ends_bounded_with_exit_3_and_a_report(backend, tmp_path, monkeypatch, capfd):
    with broker_for(backend) as broker:
        sc = scenario_file(tmp_path, backend, url_of(backend, broker))
        on_event, fired = when_delivering(lambda: os.kill(broker.proc.pid, signal.SIGKILL))
        code, out, err, elapsed = play(["play", str(sc), "--headless", *REPORTS(tmp_path)], monkeypatch, capfd, on_event)
    assert fired, "the broker was never killed: no deliveries"
    assert code == 3, (out, err)
    assert elapsed < LOAD_S + CLOSE_S + SETTLE_S + 6, elapsed
    run = assert_failed_report(tmp_path, "unreachable")
    assert f"127.0.0.1:{broker.port}" in run["error"] and "during load" in run["error"]
    assert quiet(err), err
    assert run["error"] in out + err.replace("\n", " ") or "FAILED" in err


@pytest.mark.parametrize("backend", BACKENDS)
def test_broker_stopped_mid_load_ends_bounded_with_exit_3(backend, tmp_path, monkeypatch, capfd):
    with broker_for(backend) as broker:
        sc = scenario_file(tmp_path, backend, url_of(backend, broker))
        on_event, fired = when_delivering(lambda: os.kill(broker.proc.pid, signal.SIGSTOP))
        try:
            code, out, err, elapsed = play(["play", str(sc), "--headless", *REPORTS(tmp_path)], monkeypatch, capfd, on_event)
        finally:
            os.kill(broker.proc.pid, signal.SIGCONT)
    assert fired
    assert code == 3, (out, err)
    assert elapsed < LOAD_S + CLOSE_S + SETTLE_S + 6, elapsed
    assert_failed_report(tmp_path, "not responding")
    assert quiet(err), err


@pytest.mark.parametrize("backend", BACKENDS)
def test_broker_down_at_start_fails_fast(backend, tmp_path, monkeypatch, capfd):
    url = {"kafka": "kafka", "nats": "nats", "nats-js": "nats+js"}[backend] + f"://127.0.0.1:{free_port()}"
    sc = scenario_file(tmp_path, backend, url)
    sc.write_text(sc.read_text() + '[[runs]]\nname = "second"\nmessages = 10\n')
    code, out, err, elapsed = play(["play", str(sc), "--headless", *REPORTS(tmp_path)], monkeypatch, capfd)
    assert code == 3, (out, err)
    assert elapsed < 3 + CLOSE_S + SETTLE_S + 4, elapsed
    run = assert_failed_report(tmp_path, "unreachable", delivered=False)  # the one run played
    assert run["failure"]["phase"] == "create"
    assert "1 more run not played: the broker was down at start" in out
    assert quiet(err), err


@pytest.mark.parametrize("backend", BACKENDS)
def test_broker_killed_just_before_close(backend, tmp_path, monkeypatch, capfd):
    with broker_for(backend) as broker:
        sc = scenario_file(tmp_path, backend, url_of(backend, broker))
        sc.write_text(sc.read_text().replace("messages = 200000\nrate_per_s = 5000", "messages = 2000"))

        def on_event(event):
            if isinstance(event, PhaseStarted) and event.phase == "close":
                os.kill(broker.proc.pid, signal.SIGKILL)
                broker.proc.wait()

        code, out, err, elapsed = play(["play", str(sc), "--headless", *REPORTS(tmp_path)], monkeypatch, capfd, on_event)
    assert elapsed < CLOSE_S + SETTLE_S + 8, elapsed
    assert quiet(err), err
    doc = json.loads((tmp_path / "r.json").read_text())
    (run,) = doc["runs"]
    assert run["delivery"]["received"] == 2000
    # everything was delivered: whether close notices the dead broker depends on what it still
    # had to say to it; either way nothing is left behind and busmon ends
    assert code in (0, 3), (out, err)
    assert not [x for x in run["leftovers"] if x["state"] == "leaked"], run["leftovers"]
