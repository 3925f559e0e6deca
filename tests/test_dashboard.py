"""The dashboard, driven as a person would with Pilot, and pictured with SVG snapshots."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from busmon.bus.base import State
from busmon.probes.model import Sample
from tests import recorded
from busmon.tui.app import BusmonApp
from busmon.tui.cli import interactive_scenario
from busmon.tui.controller import Controller
from textual.widgets import DataTable

from busmon.tui.widgets import LeftoversTable, PhaseBar, PhaseChart, PhaseTable, VerdictBanner

SAMPLES = Path(__file__).resolve().parents[1] / "sample_configs"


async def until(pilot, condition, what: str, timeout: float = 15.0) -> None:
    """Let the app run until ``condition`` holds, failing at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"{what} within {timeout} s"
        await pilot.pause(0.02)


async def step(pilot, c: Controller, phases: list[str]) -> None:
    """Press n for each phase, as soon as the runner is ready for it."""
    for phase in phases:
        await until(pilot, lambda: c.waiting_for == phase, f"waiting for {phase}")
        await pilot.press("n")


ALL_PHASES = ["baseline", "create", "subscribe", "load", "close", "settle"]


def controller(bus: str | None = None, messages: int = 2000, rate: float = 0, settle: float = 0.5,
               hold: float = 0.0) -> Controller:
    sc = interactive_scenario(messages=messages, rate=rate, settle=settle, hold=hold).with_target(bus=bus)
    return Controller(sc, interactive=True)


async def test_n_walks_the_phases_in_order_and_the_panels_follow():
    c = controller()
    app = BusmonApp(c)
    seen: list[str] = []
    async with app.run_test(size=(120, 40)) as pilot:
        bar, table = app.query_one(PhaseBar), app.query_one(PhaseTable)
        for phase in ["baseline", "create", "subscribe", "load", "close", "settle"]:
            await until(pilot, lambda: c.waiting_for == phase, f"waiting for {phase}")
            await until(pilot, lambda: bar.waiting_for == phase, f"the phase bar offers {phase}")
            await pilot.press("n")
            await until(pilot, lambda: bar.phase == phase or (phase == "settle" and app.results),
                        f"phase bar shows {phase}")
            seen.append(phase)
        await until(pilot, lambda: app.results, "the verdict")
        assert seen == ["baseline", "create", "subscribe", "load", "close", "settle"]
        assert list(table.rows) == ["baseline", "create", "subscribe", "load", "close", "settle"]
        assert app.results[0].verdict == "clean"
        assert app.query_one(VerdictBanner).has_class("-clean")
        # after settle, n starts a new run with a fresh bus
        await until(pilot, lambda: c.waiting_for == "baseline", "the next run")
        await pilot.press("n")
        await until(pilot, lambda: bar.run == "run-2", "run-2 starts")
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "quit")


async def test_a_leaky_bus_ends_with_its_leftover_highlighted_and_the_banner_leaked():
    c = controller(bus="tests.leaky_buses:TaskLeaker", settle=0.2)
    app = BusmonApp(c)
    async with app.run_test(size=(120, 40)) as pilot:
        await step(pilot, c, ALL_PHASES)
        await until(pilot, lambda: app.results, "the verdict")
        await pilot.pause()
        banner = app.query_one(VerdictBanner)
        assert banner.has_class("-leaked")
        assert "bus.leaky.heartbeat" in str(banner.render())
        table = app.query_one(LeftoversTable)
        state, _, name, *_ = table.get_row_at(0)
        assert (state.plain, name.plain) == ("LEAKED", "bus.leaky.heartbeat")
        assert "red" in str(state.style)
        await pilot.press("enter")  # the stack of the selected leftover
        await until(pilot, lambda: type(app.screen).__name__ == "StackScreen", "stack screen")
        await pilot.press("escape")
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "quit")
    assert app.return_code == 1


async def test_ctrl_q_quits_as_q_does_with_the_verdicts_exit_code():
    """Textual's ctrl+q would exit 0 after a leak: busmon's quits as q, exit code the verdict's."""
    c = controller(bus="tests.leaky_buses:TaskLeaker", settle=0.2)
    app = BusmonApp(c)
    async with app.run_test(size=(120, 40)) as pilot:
        await step(pilot, c, ALL_PHASES)
        await until(pilot, lambda: app.results, "the verdict")
        await pilot.press("ctrl+q")
        await until(pilot, lambda: not app.is_running, "quit")
    assert app.return_code == 1


async def test_pause_stops_the_display_but_not_the_recording():
    c = controller(messages=30000, rate=10000)
    app = BusmonApp(c)
    async with app.run_test(size=(120, 40)) as pilot:
        await step(pilot, c, ALL_PHASES[:4])
        chart = app.query_one("#chart-tasks", PhaseChart)
        await until(pilot, lambda: len(chart.points) >= 3, "samples during load")
        await pilot.press("space")
        shown, rows = len(chart.points), app.query_one(PhaseTable).row_count

        def held() -> int:
            return sum(isinstance(e, Sample) for e in app._backlog)

        await until(pilot, lambda: held() >= 5, "samples recorded while paused")
        assert len(chart.points) == shown, "the display moved while paused"
        assert app.query_one(PhaseTable).row_count == rows, "no panel moves while paused"
        recorded_n = held()
        await pilot.press("space")
        assert len(chart.points) >= shown + recorded_n
        assert app.state.note.startswith("resumed: ") and "samples recorded while paused" in app.state.note
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "quit")


async def test_q_closes_the_open_bus_before_quitting():
    c = controller(messages=200_000, rate=20000)
    app = BusmonApp(c)
    async with app.run_test(size=(120, 40)) as pilot:
        await step(pilot, c, ALL_PHASES[:4])
        await until(pilot, lambda: app.query_one(PhaseBar).phase == "load", "load under way")
        bus = c.session.current.bus
        assert bus.state is State.STARTED
        pool_tasks = bus.pool.tasks
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "quit", timeout=30)
    assert bus.state is State.CLOSED
    assert all(t.done() for t in pool_tasks)


def test_headless_play_with_screenshots_saves_one_svg_per_phase_boundary(tmp_path, monkeypatch, capsys):
    from busmon.tui import cli

    shots = tmp_path / "shots"
    report = tmp_path / "r.html"
    monkeypatch.setattr(sys, "argv", ["busmon", "play", str(SAMPLES / "quickstart.toml"), "--headless",
                                      "--screenshots", str(shots), "--report", str(report)])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 0
    names = sorted(p.name for p in shots.glob("*.svg"))
    expected = [f"{i:02d}-{run}-{n}-{phase}.svg" for i, run in ((1, "warm-up"), (2, "main"))
                for n, phase in enumerate(["baseline", "create", "subscribe", "load", "close", "settle",
                                           "verdict"], 1)]
    assert names == expected
    assert all(p.read_text().startswith("<svg") for p in shots.glob("*.svg"))
    html = report.read_text()
    assert html.count("<svg") == len(expected) and "Tasks, threads and resources by phase" in html
    assert 'url("http' not in html and "src=\"http" not in html, "the HTML report must not reach the network"


def recorded_app(until_phase: str):
    async def feed(pilot) -> None:
        for event in recorded.events(until_phase):
            pilot.app.apply(event)
        await pilot.pause()

    app = BusmonApp(None)
    # what a played scenario shows in the header: its backend, its target (password masked), 2 runs
    app.state = replace(app.state, backend="kafka", target="kafka://bob:***@127.0.0.1:9093", runs_total=2)
    return app, feed


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
@pytest.mark.parametrize("phase", ["load", "verdict"])
def test_snapshot(snap_compare, size, phase):
    app, feed = recorded_app(phase)
    assert snap_compare(app, terminal_size=size, run_before=feed)


async def test_filter_and_screenshot_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = BusmonApp(None)
    async with app.run_test(size=(120, 40)) as pilot:
        for event in recorded.events("verdict"):
            app.apply(event)
        await pilot.pause()
        table = app.query_one(LeftoversTable)
        # leaked task and socket, retained memory, the stall, then the rest as settle ordered them
        assert [(x.state, x.kind) for x in table.items] == [
            ("leaked", "task"), ("leaked", "socket"), ("leaked", "memory"), ("stalled", "stall"),
            ("ignored", "thread"), ("exited", "task")]
        assert table.row_count == 6
        await pilot.press("slash")
        await pilot.press(*"sloppy")
        await pilot.press("enter")
        await pilot.pause()
        assert table.row_count == 1 and table.selected().name == "bus.sloppy.worker-0"
        await pilot.press("slash", "escape")
        await pilot.pause()
        assert table.row_count == 6
        await pilot.press("e")
        await pilot.pause()
        # never loose in the folder busmon was started from (a checkout, often): in a folder of its own
        assert not list(tmp_path.glob("*.svg"))
        shots = list((tmp_path / "busmon-screenshots").glob("*.svg"))
        assert len(shots) == 1 and shots[0].read_text().startswith("<svg")
        # the toast says where, the folder and the file each whole on a line of its own
        (toast,) = [n.message for n in app._notifications]
        assert toast.split("\n") == ["screenshot saved in", "busmon-screenshots/", shots[0].name]
        await pilot.press("question_mark")
        await pilot.pause()
        assert type(app.screen).__name__ == "HelpScreen"


async def test_hold_is_a_phase_of_its_own_when_asked_for():
    c = controller(hold=0.1)
    app = BusmonApp(c)
    async with app.run_test(size=(120, 40)) as pilot:
        await step(pilot, c, ["baseline", "create", "subscribe", "load", "hold", "close", "settle"])
        await until(pilot, lambda: app.results, "the verdict")
        assert [p.phase for p in app.results[0].phases] == [
            "baseline", "create", "subscribe", "load", "hold", "close", "settle"]
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "quit")


async def test_a_persons_pause_before_settle_is_not_settle_time():
    c = controller(messages=200, settle=1.0)
    app = BusmonApp(c)
    async with app.run_test(size=(120, 40)) as pilot:
        await step(pilot, c, ["baseline", "create", "subscribe", "load", "close"])
        await until(pilot, lambda: c.waiting_for == "settle", "waiting for settle")
        await pilot.pause(1.5)  # the person looks at the naive count a while: what is under test
        await pilot.press("n")
        await until(pilot, lambda: app.results, "the verdict")
        (run,) = app.results
        assert run.verdict == "clean", (run.leftovers, run.memory.get("retained"), run.memory.get("types"))
        assert run.settle_ms < 1000, run.settle_ms     # the bus settled at once; the deadline is 1 s
        assert run.paused_ms >= 1000, run.paused_ms    # shown apart
        assert "you looked" in str(app.query_one(VerdictBanner).render())
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "quit")


async def test_the_dashboard_holds_still_while_memory_is_judged():
    """The arena judges retained memory while the dashboard's thread is parked in a callback,
    so no screenshot is half drawn (hundreds of strings) at that moment; and it lets go after."""
    import threading
    import traceback

    app = BusmonApp(None)
    async with app.run_test(size=(80, 24)) as pilot:
        def judge() -> list[str]:
            with app.parked():
                frame = sys._current_frames()[app._thread_id]
                return [f.name for f in traceback.extract_stack(frame)]

        names = await asyncio.to_thread(judge)
        assert "park" in names, names  # the app's thread was inside the parking callback
        assert threading.get_ident() == app._thread_id
        await pilot.press("question_mark")  # and answers again once released
        await until(pilot, lambda: len(app.screen_stack) > 1, "the help screen after parking")


@pytest.mark.parametrize("phase", ["load", "verdict"])
async def test_at_80x24_the_footer_keeps_help_and_quit_and_the_figures_are_not_cut(phase):
    from textual.widgets._footer import FooterKey

    from busmon.tui.widgets.throughput import Rates

    app, feed = recorded_app(phase)
    async with app.run_test(size=(80, 24)) as pilot:
        await feed(pilot)
        shown = {k.description: k.region for k in app.query(FooterKey)}
        for key in ("Next", "Help", "Quit"):  # on screen, whole
            assert key in shown and shown[key].width and shown[key].right <= 80, (key, shown)
        rates = app.query_one(Rates)
        lines = rates.render().plain.split("\n")
        assert lines and all(len(line) <= rates.size.width for line in lines), (rates.size.width, lines)


async def test_every_run_of_a_played_ladder_can_be_looked_at_again():
    """busmon play in the dashboard ends on the runs side by side (r shows them again); enter shows
    one (its phases, figures, verdict) on the main screen; the header says which."""
    from busmon.probes.harness.scenario import load_scenario
    from busmon.tui.app import RunsScreen

    sc = load_scenario(SAMPLES / "quickstart.toml")
    app = BusmonApp(Controller(sc, interactive=False))
    async with app.run_test(size=(80, 24)) as pilot:
        # at the end of the playback the runs are compared on a screen of their own
        await until(pilot, lambda: isinstance(app.screen, RunsScreen), "the runs screen at the end", timeout=60)
        table = app.screen.query_one(DataTable)
        await until(pilot, lambda: table.row_count == 2, "a row per run")
        assert [str(table.get_row_at(i)[0]) for i in range(2)] == ["warm-up", "main"]
        # keys go to the focused widget: the table takes focus after it is filled (Textual's
        # focus is a message of its own), with its cursor on the last run
        await until(pilot, lambda: table.has_focus and table.cursor_row == 1, "the last run, focused")
        await pilot.press("up", "enter")
        await until(pilot, lambda: not isinstance(app.screen, RunsScreen), "back on the main screen")
        assert app.state.viewing == "1/2 warm-up"
        assert "SHOWING RUN 1/2 warm-up" in app.query_one(PhaseBar).render().plain
        assert "warm-up" in str(app.query_one(VerdictBanner).render())
        assert app.query_one(PhaseBar).state.run_label() == "run 2/2 main"  # the live state is kept
        await pilot.press("escape")
        await until(pilot, lambda: not app.state.viewing, "esc: back to the live run")
        assert "main" in str(app.query_one(VerdictBanner).render())
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen), "r shows the runs again")


async def test_enter_opens_a_leftovers_stack_full_screen_and_esc_returns():
    from busmon.tui.app import StackScreen

    app, feed = recorded_app("verdict")
    async with app.run_test(size=(80, 24)) as pilot:
        await feed(pilot)
        app.query_one(LeftoversTable).focus()
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, StackScreen), "the stack screen")
        assert app.screen.region.width == 80 and app.screen.query_one("StackView").region.height > 15
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, StackScreen), "back")


def test_help_names_every_key_and_the_hold_phase():
    from busmon.tui.app import HELP

    for binding in BusmonApp.BINDINGS:
        key = binding.key_display or binding.key
        assert f"[b]{key}" in HELP or f"/ {key}" in HELP or f"{key} /" in HELP, key
    assert "hold" in HELP and "ctrl+p" in HELP


FAILED_CREATE = "kafka 127.0.0.1:9093: authentication failed (SCRAM-SHA-256, user bob)"


async def _failed_create(pilot) -> None:
    from busmon.probes.model import FailureNoted, PhaseStarted

    events = recorded.events("load")[:2] + [PhaseStarted("run-1", "create", 0.5),
                                            FailureNoted("run-1", "create", FAILED_CREATE),
                                            PhaseStarted("run-1", "close", 0.6)]
    for event in events:
        pilot.app.apply(event)
    await pilot.pause()


async def _paused_and_filtered(pilot) -> None:
    for event in recorded.events("load"):
        pilot.app.apply(event)
    await pilot.press("space", "slash", *"pool", "enter")
    await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
@pytest.mark.parametrize("state", ["failed-create", "paused-filtered"])
def test_state_snapshot(snap_compare, size, state):
    """What a person sees in each state: the failure in the phase where it happened, with its one
    line; a lasting PAUSED mark and the filter in force."""
    app, _ = recorded_app("load")
    setup = {"failed-create": _failed_create, "paused-filtered": _paused_and_filtered}[state]
    assert snap_compare(app, terminal_size=size, run_before=setup)


async def test_the_states_reach_the_header_and_banner():
    app, _ = recorded_app("load")
    async with app.run_test(size=(80, 24)) as pilot:
        await _failed_create(pilot)
        assert app.state.failed == ("create", FAILED_CREATE)
        assert FAILED_CREATE in str(app.query_one(VerdictBanner).render())  # kept through close
    app, _ = recorded_app("load")
    async with app.run_test(size=(80, 24)) as pilot:
        await _paused_and_filtered(pilot)
        assert app.state.paused and app.state.filter == "pool"
        status = app.query_one(PhaseBar).render().plain.split("\n")[1]
        assert "PAUSED" in status and 'filter "pool"' in status


async def test_n_pressed_during_load_starts_the_next_phase_when_load_ends():
    c = controller(messages=12000, rate=4000)  # a 3 s load
    app = BusmonApp(c)
    async with app.run_test(size=(80, 24)) as pilot:
        await step(pilot, c, ALL_PHASES[:4])
        await until(pilot, lambda: app.state.phase == "load" and c.waiting_for is None, "load under way")
        await pilot.press("n")  # too early: kept (the header's word for it is tested in test_dashboard_state)
        await until(pilot, lambda: c.waiting_for == "settle", "close done, without a second n", timeout=30)
        await pilot.press("q")
        await until(pilot, lambda: not app.is_running, "quit")


async def test_a_filter_that_hides_every_leftover_says_so_for_as_long_as_it_does():
    from busmon.tui.widgets import StackView

    app, feed = recorded_app("verdict")
    async with app.run_test(size=(120, 40)) as pilot:
        await feed(pilot)
        table, stack, bar = app.query_one(LeftoversTable), app.query_one(StackView), app.query_one(PhaseBar)
        await pilot.press("down")  # the socket's row: its facts in the stack pane
        assert "tcp → 127.0.0.1:9092" in str(stack.render())
        await pilot.press("slash", *"nomatch", "enter")
        await until(pilot, lambda: app.state.filter == "nomatch", "the filter in force")
        status = bar.render().plain.split("\n")[1]
        assert table.items and 'filter "nomatch" hides all 6 leftovers (esc clears it)' in status
        # the stack pane no longer shows a leftover the table hides
        assert str(stack.render()) == 'the filter "nomatch" hides all 6 leftovers: esc clears it'
        await pilot.press("escape")
        # at once, not a note left to time out: nothing is hidden any more
        assert app.state.filter == "" and "hides" not in bar.render().plain
        assert table.visible() == table.items and "hides" not in str(stack.render())
        assert str(stack.render()).startswith("task bus.leaky.heartbeat")


async def _busy_n(pilot) -> None:
    """n pressed during load: the header says it is kept and acts when load ends."""
    from busmon.tui.state import NextPressed

    for event in recorded.events("load"):
        pilot.app.apply(event)
    pilot.app._advance(NextPressed(False))
    await pilot.pause()


async def _browsing(pilot) -> None:
    for event in recorded.events("verdict"):
        pilot.app.apply(event)
    await pilot.press("r")
    await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
@pytest.mark.parametrize("state", ["busy-n", "runs"])
def test_more_state_snapshots(snap_compare, size, state):
    app, _ = recorded_app("load")
    assert snap_compare(app, terminal_size=size, run_before={"busy-n": _busy_n, "runs": _browsing}[state])
