"""What the dashboard says stays true and whole: figures never cut at 80 columns, the header's
second line never cut mid-word, a component's peak never below its live count, a stack frame
never parted from its function (issue 23)."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from busmon.probes.model import Leftover, PhaseSnapshot, PhaseStarted, Sample
from busmon.probes.model import RunFinished
from tests import recorded
from tests.test_dashboard import recorded_app
from busmon.tui.app import BusmonApp
from busmon.tui.state import DashState, Noted
from busmon.tui.widgets import ComponentsTable, LeftoversTable, StackView
from busmon.tui.widgets.leftovers import fit_widths, frame_lines
from busmon.tui.widgets.phase_bar import status_line
from busmon.tui.widgets.throughput import Rates


def screen_lines(app: BusmonApp) -> list[str]:
    """The screen as a terminal shows it, line by line."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


# -- tasks by component: the peak ------------------------------------------------------------

async def test_a_components_peak_is_never_shown_below_its_live_count_in_the_next_run():
    """Run 2 of a leaky bus: the heartbeat left by run 1 is in the baseline (1), run 2 starts
    another (2). The model's peak is 2; the row kept from the baseline must say so too."""
    app = BusmonApp(None)
    leaked = {"bus.leaky.heartbeat": 1, **recorded.BASE}
    run2 = [PhaseStarted("run-2", "baseline", 0.0),
            PhaseSnapshot("baseline", 0.01, 3, 4, 4, leaked),
            PhaseStarted("run-2", "create", 0.5),
            replace(recorded.sample("create", 0.6, 4, 0, 0, 0), run="run-2",
                    by_component={"bus.leaky.heartbeat": 2, **recorded.BASE})]
    async with app.run_test(size=(120, 40)) as pilot:
        for event in recorded.events("verdict") + run2:
            app.apply(event)
        await pilot.pause()
        shown = app.query_one(ComponentsTable).shown()
        assert shown["bus.leaky.heartbeat"] == (2, 2), shown
        assert all(peak >= live for live, peak in shown.values()), shown


async def test_a_long_component_is_shortened_and_its_figures_stay_on_screen():
    app = BusmonApp(None)
    long = "created at some/where/deep/inside/a/package/module_with_a_long_name.py:1234"
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(ComponentsTable)
        table.show({long: 7, "bus.pool": 256}, {long: 9, "bus.pool": 256})
        await pilot.pause()
        lines = [line for line in screen_lines(app) if "created at" in line]
        assert lines and re.search(r"…\S*\s+7\s+9\s+│", lines[0]), lines
        assert table.shown()[long] == (7, 9)


# -- the header's second line -----------------------------------------------------------------

def test_the_status_line_gives_way_from_its_tail_and_never_cuts_a_word():
    st = DashState(backend="memory", failed=("load", "boom"), phase="close", interval_ms=100)
    full = status_line(st).plain
    assert full == " n: after the verdict (busmon closes and settles on its own) · memory (embedded) · every 100 ms"
    assert status_line(st, 80).plain == " n: after the verdict (busmon closes and settles on its own) · memory · 100 ms"
    assert status_line(st, 60).plain == " n: after the verdict · memory (embedded) · every 100 ms"
    target = DashState(backend="kafka", target="kafka://bob:***@127.0.0.1:9093", interval_ms=50,
                       filter="pool", note="resumed: 3 samples recorded while paused")
    for width in range(30, 140):
        line = status_line(target, width).plain
        # what is left is whole parts, most urgent first
        assert line.startswith(' filter "pool" (/ to change) · resumed: 3 samples'), (width, line)
        assert not line.endswith("·") and "…" not in line


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
async def test_the_header_at_80_columns_is_whole(size):
    app, feed = recorded_app("load")
    async with app.run_test(size=size) as pilot:
        await feed(pilot)
        app.state = replace(app.state, backend="memory", target="", failed=("load", "boom"))
        app._advance(Noted("nothing waits for n now"))
        await pilot.pause()
        line = screen_lines(app)[1].rstrip()
        assert "…" not in line and line.endswith(" ms") and " · memory" in line, line
        assert "nothing waits for n now" in line and line.startswith(" n: after the verdict")


# -- the throughput panel -----------------------------------------------------------------------

FIGURE = re.compile(r"[\d,.]+(?:k|M|ms)?")


def _rates(final: bool, pub: float, sent: int) -> Rates:
    evs = recorded.events("verdict")
    r = evs[-1].result
    rates = Rates()
    if final:
        rates.final = replace(r, throughput={**r.throughput, "publish_per_s": pub, "deliver_per_s": pub - 3},
                              delivery={**r.delivery, "sent": sent, "received": sent, "lost": 0})
    else:
        s = [e for e in evs if isinstance(e, Sample)][-10]
        rates.sample = replace(s, publish_per_s=pub, deliver_per_s=pub - 3, published=sent, delivered=sent)
    return rates


@pytest.mark.parametrize("final", [True, False], ids=["averages", "live"])
@pytest.mark.parametrize("pub,sent", [(337_872.0, 2_000_000), (5_000.0, 20_000), (12_345_678.0, 123_456_789)])
def test_the_rates_never_cut_a_figure_nor_run_it_into_a_label(final, pub, sent):
    from textual.geometry import Size

    for width in range(14, 70):
        rates = _rates(final, pub, sent)
        rates._size = Size(width, 5)  # what layout gives it; render reads only the width
        text = rates.render().plain
        for line in text.split("\n"):
            assert len(line) <= width, (width, text)
            # label, figure, then (after at least one space) the next label: nothing glued
            assert not re.search(r"\d[a-z]{2,}", line.replace("ms", "").replace("k ", " ")), (width, line)


async def test_the_averages_at_120x40_keep_two_spaces_between_a_figure_and_the_next_label():
    app = BusmonApp(None)
    events = recorded.events("verdict")
    r = events[-1].result
    events[-1] = RunFinished(replace(r, throughput={**r.throughput, "publish_per_s": 337_872.0,
                                                    "deliver_per_s": 337_869.0}))
    async with app.run_test(size=(120, 40)) as pilot:
        for event in events:
            app.apply(event)
        await pilot.pause()
        (line,) = [x for x in screen_lines(app) if "avg pub/s" in x]
        assert re.search(r"avg pub/s\s+337,872  +avg del/s\s+337,869", line), line


# -- the leftovers table and the stack pane ----------------------------------------------------

def test_the_wrapped_columns_give_way_widest_first_and_only_when_needed():
    assert fit_widths([7, 6, 20, 10, 11], [2, 3], 60) == [None] * 5
    assert fit_widths([7, 6, 27, 23, 11], [2, 3], 66) == [None, None, 21, 21, None]
    assert fit_widths([7, 7, 55, 13, 11], [2, 3], 66) == [None, None, 28, 13, None]
    assert fit_widths([7, 6, 40, 40, 11], [2, 3], 20) == [None, None, 8, 8, None]  # never below 8


# 80 columns; rows enough that the row's wrapped lines all show whatever the banner above says
# (its library-log summary is the process's, so it depends on what ran before in this process)
@pytest.mark.parametrize("size", [(80, 32), (120, 40)], ids=["80x32", "120x40"])
async def test_a_leftovers_figures_are_never_cut_the_long_cells_wrap(size):
    long = Leftover("process", "pid 4242: python -c import sys; sys.stdin.buffer.read()", "process:tests",
                    "exited", 1234.5, (), None, "pid 4242, command: python -c …")
    app, feed = recorded_app("verdict")
    async with app.run_test(size=size) as pilot:
        await feed(pilot)
        table = app.query_one(LeftoversTable)
        table.show((long,) + tuple(table.items))
        await pilot.pause()
        lines = screen_lines(app)
        text = "\n".join(lines)
        assert "1234.5 ms" in text and "still alive" in text  # the last column, whole
        # the name wrapped onto the row's next lines, every character of it there
        head = next(i for i, x in enumerate(lines) if "│ state" in x)
        left, right = lines[head].index("name"), lines[head].index("component")
        first = next(i for i, x in enumerate(lines) if i > head and "pid 4242" in x[left:right])
        column = [x[left:right].strip() for x in lines[first:first + 6] if x.startswith("│")]
        assert "bus.leaky.heartbeat" in column, column  # the next row: the long one showed whole
        cells = column[:column.index("bus.leaky.heartbeat")]
        assert "".join(cells).replace(" ", "") == long.name.replace(" ", ""), column
        assert table.virtual_size.width <= table.scrollable_content_region.width  # nothing off to the right


def test_a_stack_frame_keeps_its_function_beside_its_file():
    frame = "tests/leaky_buses.py:42 in _forever"
    assert frame_lines(frame, 40) == ["  tests/leaky_buses.py:42 in _forever"]
    assert frame_lines(frame, 36) == ["  tests/leaky_buses.py:42", "    in _forever"]
    assert frame_lines("awaiting FutureIter", 10) == ["  awaiting FutureIter"]


async def test_the_stack_pane_at_120x40_never_parts_a_function_from_its_file():
    app, feed = recorded_app("verdict")
    async with app.run_test(size=(120, 40)) as pilot:
        await feed(pilot)
        pane = app.query_one(StackView)
        lines = [x.strip() for x in str(pane.render()).split("\n")]
        assert lines[0] == "task bus.leaky.heartbeat"
        i = next(n for n, x in enumerate(lines) if x.startswith("tests/leaky_buses.py:42"))
        assert lines[i].endswith("in _forever") or lines[i + 1] == "in _forever", lines
        # as the terminal shows it: no line of the pane ends in a dangling "in"
        shown = [x for x in screen_lines(app) if "leaky_buses.py:42" in x]
        assert shown and not any(re.search(r"\bin\s*│\s*$", x) for x in shown), shown


async def test_the_header_first_line_drops_the_runs_name_before_cutting_at_80_columns():
    app, feed = recorded_app("load")
    async with app.run_test(size=(80, 24)) as pilot:
        await feed(pilot)
        app._advance(PhaseStarted("warm-up-with-a-rather-long-name", "baseline", 9.0))
        await pilot.pause()
        line = screen_lines(app)[0].rstrip()
        assert "…" not in line and line.endswith(" run 2/2 0.0s"), line
