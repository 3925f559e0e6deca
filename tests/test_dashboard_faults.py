"""Broker faults in the dashboard, driven with Pilot: the failure shows in the phase where it
happened, the screen stays responsive, the bus is closed and settled on its own, q exits 3."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace

import pytest

from busmon.probes.harness.logs import CAPTURE
from busmon.probes.harness.scenario import DeadlineSpec
from tests.brokers import nats_server, tansu
from tests.test_dashboard import step, until
from busmon.tui.app import BusmonApp
from busmon.tui.cli import interactive_scenario
from busmon.tui.controller import Controller
from busmon.tui.widgets import PhaseBar, VerdictBanner


def broker_controller(url: str) -> Controller:
    sc = interactive_scenario(messages=200_000, rate=5000, settle=0.5).with_target(url=url)
    sc = replace(sc, deadlines=DeadlineSpec(start_s=3, subscribe_s=8, close_s=3),
                 bus_options={"connect_timeout": 2, "close_timeout": 2, "drain_timeout": 1},
                 runs=(replace(sc.runs[0], load_timeout_s=4),))
    return Controller(sc, interactive=True)


@pytest.mark.parametrize("backend", ["kafka", "nats"])
async def test_broker_killed_mid_load_in_the_dashboard(backend):
    CAPTURE.reset()
    with (tansu() if backend == "kafka" else nats_server()) as broker, CAPTURE:
        c = broker_controller(broker.url)
        app = BusmonApp(c)
        async with app.run_test(size=(120, 40)) as pilot:
            await step(pilot, c, ["baseline", "create", "subscribe", "load"])
            await until(pilot, lambda: c.session.current.audit.received >= 1000, "deliveries flowing")
            os.kill(broker.proc.pid, signal.SIGKILL)
            t0 = time.monotonic()
            banner = app.query_one(VerdictBanner)
            # "FAILED in load: …" at once, then "FAILED run run-1: … during load …" after settling
            await until(pilot, lambda: banner.has_class("-failed") and "load" in str(banner.render()),
                        "the failure in the banner", timeout=10)
            assert "unreachable" in str(banner.render())
            # closed and settled without a key press, and still answering keys meanwhile
            await pilot.press("question_mark")
            await until(pilot, lambda: type(app.screen).__name__ == "HelpScreen", "help opens")
            await pilot.press("escape")
            await until(pilot, lambda: app.results, "the verdict", timeout=10)
            assert time.monotonic() - t0 < 4 + 3 + 0.5 + 3
            assert app.results[0].verdict == "failed"
            if backend == "kafka":  # aiokafka's complaints: counted, summarised once, not sprayed
                assert "library logs: aiokafka" in str(banner.render())
            assert app.query_one(PhaseBar).run == "run-1"
            await pilot.press("q")
            await until(pilot, lambda: not app.is_running, "quit", timeout=10)
        assert app.return_code == 3


async def test_quitting_scripted_playback_after_a_failed_run_exits_3():
    from busmon.probes.harness.scenario import parse_scenario

    sc = parse_scenario('backend = "tests.leaky_buses:StuckPublish"\n[bus]\nafter = 50\n'
                        '[deadlines]\nclose_s = 2\n[probes]\nsettle_timeout_s = 0.2\n'
                        '[defaults]\nload_timeout_s = 0.5\n[[runs]]\nname = "first"\nmessages = 100\n'
                        '[[runs]]\nname = "second"\nmessages = 10000000\nrate_per_s = 1000\n', "q.toml")
    sc = replace(sc, runs=(sc.runs[0], replace(sc.runs[1], load_timeout_s=60)),
                 bus_options={"after": 50})
    c = Controller(sc, interactive=False)
    app = BusmonApp(c)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.results and app.query_one(PhaseBar).run == "second", "the second run")
        assert app.results[0].verdict == "failed"
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "quit", timeout=10)
    assert app.return_code == 3
    (first, second) = c.session.results  # the second run was cut short, closed, settled, judged
    assert second.failure["kind"] == "interrupted"


async def test_quitting_mid_load_on_a_healthy_bus_does_not_wait_for_the_settle_deadline():
    sc = interactive_scenario(messages=10_000_000, rate=2000, settle=5.0)
    c = Controller(sc, interactive=True)
    app = BusmonApp(c)
    async with app.run_test(size=(120, 40)) as pilot:
        await step(pilot, c, ["baseline", "create", "subscribe", "load"])
        await until(pilot, lambda: c.session.current.audit.received >= 100, "deliveries flowing")
        t0 = time.monotonic()
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "quit", timeout=10)
        took = time.monotonic() - t0
    assert app.return_code == 0
    assert took < 3.0, took  # nothing of the UI's own is left for settling to wait on
    (run,) = c.session.results
    assert run.failure["kind"] == "interrupted" and not run.count("leaked")
