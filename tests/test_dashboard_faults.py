"""Broker faults in the dashboard, driven with Pilot: the failure shows in the phase where it
happened, the screen stays responsive, the bus is closed and settled on its own, q exits 3."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace

import pytest

from probes.scenario import DeadlineSpec
from tests.brokers import nats_server, tansu
from tests.test_dashboard import step, until
from tui.app import BusmonApp
from tui.cli import interactive_scenario
from tui.controller import Controller
from tui.widgets import PhaseBar, VerdictBanner


def broker_controller(url: str) -> Controller:
    sc = interactive_scenario(messages=200_000, rate=5000, settle=0.5).with_target(url=url)
    sc = replace(sc, deadlines=DeadlineSpec(start_s=3, subscribe_s=8, close_s=3),
                 bus_options={"connect_timeout": 2, "close_timeout": 2, "drain_timeout": 1},
                 runs=(replace(sc.runs[0], load_timeout_s=4),))
    return Controller(sc, interactive=True)


@pytest.mark.parametrize("backend", ["kafka", "nats"])
async def test_broker_killed_mid_load_in_the_dashboard(backend):
    with (tansu() if backend == "kafka" else nats_server()) as broker:
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
            assert app.query_one(PhaseBar).run == "run-1"
            await pilot.press("q")
            await until(pilot, lambda: not app.is_running, "quit", timeout=10)
        assert app.return_code == 3
