"""A blocked event loop is told: by the pytest plugin (a warning, or a failure past
``fail_on_stall_ms``) and by ``watch()``, with the same watchdog ``busmon play`` uses.

The pytester cases run inline test files the way users run them. The blocks are deliberate:
``time.sleep(0.3)`` inside a coroutine is the behaviour under test, not a synchronisation.
"""

from __future__ import annotations

import asyncio
import textwrap
import threading
import time
import warnings

import pytest

from busmon.probes.observe.loopwatch import WATCHDOG_THREAD_NAME, LoopWatch, shared_watchdog
from busmon.probes.watching.watch import StallError, StallWarning, WatchOptionError, watch

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""

BLOCKS = """
import asyncio, threading, time, pytest
from busmon.probes.observe.loopwatch import shared_watchdog

@pytest.mark.busmon{marker}
async def test_blocks():
    time.sleep(0.3)

@pytest.mark.busmon(fail_on_stall_ms=100)
async def test_clean():
    assert shared_watchdog().armed == 1  # watched: the watchdog looks at this loop
    await asyncio.sleep(0.01)

@pytest.mark.busmon(fail_on_stall_ms=100)
def test_sync_blocks():
    assert shared_watchdog().armed == 0  # a sync test: no loop watched
    time.sleep(0.3)

def test_no_watchdog_left():
    assert shared_watchdog().armed == 0  # disarmed at each verdict
"""


def line_of(source: str, text: str, after: int = 0) -> int:
    """The line number of ``text`` in the test file written from ``source``."""
    lines = textwrap.dedent(source).lstrip("\n").splitlines()  # as pytester writes it
    return next(i for i, line in enumerate(lines, 1) if i > after and text in line)


#: the blocking line of BLOCKS, as the watchdog names it
BLOCKING_AT = f"test_x.py:{line_of(BLOCKS, 'time.sleep(0.3)')} in test_blocks"
BLOCKING = f"{BLOCKING_AT}: time.sleep(0.3)"


def run(pytester: pytest.Pytester, source: str, *args: str, ini: str = INI) -> pytest.RunResult:
    pytester.makefile(".ini", pytest=ini)
    pytester.makepyfile(test_x=textwrap.dedent(source))
    return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:textual-snapshot", "-p", "no:syrupy",
                              "-p", "no:randomly", *args)


def test_a_blocked_loop_is_a_warning_naming_the_blocking_line(pytester: pytest.Pytester) -> None:
    result = run(pytester, BLOCKS.format(marker=""), "-rP")
    result.assert_outcomes(passed=4, warnings=1)
    result.stdout.fnmatch_lines([
        f"*StallWarning: busmon: the event loop was blocked * ms at *{BLOCKING} (-rP shows the stack)",
        "*busmon stalls, setup to teardown*",
        "busmon: 1 stall of the event loop (it ran nothing for 250 ms or more); a warning "
        "(fail_on_stall_ms is not set)",
        f"stall 1: * ms, during the test, at *{BLOCKING}",
        "  stack (innermost last):",
        f"    *{BLOCKING_AT}",
    ])
    out = result.stdout.str()
    assert out.count("busmon stalls") == 1, out  # the clean async test and the sync one have none
    assert "leaked" not in out and "busmon after teardown" not in out  # no observer effect


def test_fail_on_stall_ms_in_the_marker_fails_the_test(pytester: pytest.Pytester) -> None:
    result = run(pytester, BLOCKS.format(marker="(fail_on_stall_ms=100)"))
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines([
        "*1 stall of the event loop (it ran nothing for 100 ms or more); 1 of 1 at least "
        "fail_on_stall_ms = 100 ms: a failure",
        f"stall 1: * ms, during the test, at *{BLOCKING}",
        "ERROR test_x.py::test_blocks - busmon: the event loop was blocked *",
    ])


def test_fail_on_stall_ms_in_the_ini_file_fails_the_test(pytester: pytest.Pytester) -> None:
    result = run(pytester, BLOCKS.format(marker=""), ini=INI + "busmon_fail_on_stall_ms = 250\n")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines([f"stall 1: * ms, during the test, at *{BLOCKING}",
                                 "ERROR test_x.py::test_blocks - busmon: the event loop was blocked *"])


def test_a_stall_shorter_than_fail_on_stall_ms_only_warns(pytester: pytest.Pytester) -> None:
    result = run(pytester, BLOCKS.format(marker="(fail_on_stall_ms=2000)"), "-rP")
    result.assert_outcomes(passed=4, warnings=1)
    result.stdout.fnmatch_lines(["*none reaches fail_on_stall_ms = 2000 ms: a warning"])


def test_stall_ms_zero_watches_no_loop(pytester: pytest.Pytester) -> None:
    result = run(pytester, """
        import threading, time, pytest

        from busmon.probes.observe.loopwatch import shared_watchdog

        @pytest.mark.busmon(stall_ms=0)
        async def test_blocks():
            assert shared_watchdog().armed == 0
            time.sleep(0.3)
    """, "-rP")
    result.assert_outcomes(passed=1)
    assert "busmon stalls" not in result.stdout.str() and "StallWarning" not in result.stdout.str()


def test_warning_made_an_error_fails_the_test(pytester: pytest.Pytester) -> None:
    result = run(pytester, BLOCKS.format(marker=""), "-W", "error::busmon.StallWarning")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines([f"stall 1: * ms, during the test, at *{BLOCKING}",
                                 "ERROR test_x.py::test_blocks - busmon: the event loop was blocked *"])


def test_the_gap_between_the_loops_runs_is_no_stall_and_a_block_right_after_it_is(
        pytester: pytest.Pytester) -> None:
    """pytest-asyncio runs the test's loop in turns (an async fixture, then the body); between
    them a sync fixture holds the main thread 300 ms with the loop stopped: not a stall. The body
    then blocks at once, before the loop's first beat: that is one, and only it is told."""
    source = """
        import time, pytest

        @pytest.fixture
        async def runs_the_loop():
            yield

        @pytest.fixture
        def slow_sync_setup(runs_the_loop):
            time.sleep(0.3)
            yield

        @pytest.mark.busmon
        async def test_blocks(slow_sync_setup):
            time.sleep(0.3)
    """
    result = run(pytester, source, "-rP")
    result.assert_outcomes(passed=1, warnings=1)
    line = line_of(source, "time.sleep(0.3)", after=line_of(source, "def test_blocks"))
    result.stdout.fnmatch_lines(["busmon: 1 stall of the event loop*",
                                 f"stall 1: * ms, during the test, at *test_x.py:{line} in test_blocks: time.sleep(0.3)"])


def test_anyio_asyncio_test_is_watched_too(pytester: pytest.Pytester) -> None:
    source = """
        import time, pytest

        pytestmark = pytest.mark.anyio

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.busmon(fail_on_stall_ms=100)
        async def test_blocks():
            time.sleep(0.3)
    """
    result = run(pytester, source, "-p", "no:asyncio", ini="[pytest]\n")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([f"stall 1: * ms, during the test, at *test_x.py:{line_of(source, 'time.sleep')} "
                                 "in test_blocks: time.sleep(0.3)",
                                 "ERROR test_x.py::test_blocks - busmon: the event loop was blocked *"])


@pytest.mark.parametrize(("ini", "marker", "message"), [
    ("busmon_fail_on_stall_ms = soon", "", "ERROR: pytest.ini: busmon_fail_on_stall_ms: expected a number of "
     "milliseconds ≥ 0, or none to only warn of stalls, got 'soon'"),
    ("busmon_stall_ms = 1", "", "ERROR: pytest.ini: busmon_stall_ms: expected a whole number of milliseconds "
     "≥ 2, or 0 to not watch the event loop, got '1'"),
    ("", "fail_on_stall_ms=-5", "ERROR: test_x.py::test_x: @pytest.mark.busmon: fail_on_stall_ms: expected a "
     "number of milliseconds ≥ 0, or none to only warn of stalls, got -5"),
])
def test_bad_values_are_one_line_naming_the_option(pytester: pytest.Pytester, ini: str, marker: str,
                                                   message: str) -> None:
    result = run(pytester, f"""
        import pytest

        @pytest.mark.busmon({marker})
        async def test_x():
            pass
    """, ini=INI + ini + "\n")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.lines, result.stderr.str()
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


# -- watch() -------------------------------------------------------------------------------------

def _watchdogs() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == WATCHDOG_THREAD_NAME]


def _beats(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    """The watchdog's heartbeat timers still scheduled on ``loop``."""
    return [h for h in loop._scheduled  # type: ignore[attr-defined]
            if not h.cancelled() and isinstance(getattr(h._callback, "__self__", None), LoopWatch)]


def test_watch_warns_of_a_stall_by_default_and_raises_past_fail_on_stall_ms() -> None:
    async def main() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with watch() as w:
                # the shared thread (a busmon play test earlier in this process may still have its
                # own dedicated watchdog: threads are told by identity, not by name)
                assert shared_watchdog().thread in _watchdogs() and shared_watchdog().armed == 1
                time.sleep(0.3)
        assert w.verdict == "clean"
        assert w.result is not None and len(w.result.stalls) == 1
        stall = w.result.stalls[0]
        assert stall.duration_ms >= 290 and stall.blocking.endswith(": time.sleep(0.3)"), stall
        assert [type(c.message) for c in caught] == [StallWarning]
        assert "1 stall of the event loop" in str(caught[0].message)

        with pytest.raises(StallError) as raised:
            async with watch(fail_on_stall_ms=250):
                time.sleep(0.3)
        assert "1 of 1 at least fail_on_stall_ms = 250 ms: a failure" in str(raised.value)
        assert raised.value.result.failing_stalls == list(raised.value.result.stalls)

        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a clean block warns of nothing
            async with watch(fail_on_stall_ms=100) as w:
                await asyncio.sleep(0.01)
        assert w.result is not None and w.result.stalls == () and w.result.stall_ms == 100
        assert shared_watchdog().armed == 0 and not _beats(asyncio.get_running_loop())  # disarmed

    asyncio.run(main())
    assert shared_watchdog().thread in _watchdogs() and shared_watchdog().armed == 0  # parked



def test_a_plain_with_arms_no_watchdog() -> None:
    with watch(fail_on_stall_ms=0) as w:
        assert shared_watchdog().armed == 0
    assert w.result is not None and w.result.stall_ms is None and w.result.stalls == ()


@pytest.mark.parametrize(("options", "message"), [
    ({"fail_on_stall_ms": -1}, "watch(): fail_on_stall_ms: expected a number of milliseconds ≥ 0, or none to only "
                               "warn of stalls, got -1"),
    ({"stall_ms": 1.5}, "watch(): stall_ms: expected a whole number of milliseconds ≥ 2, or 0 to not watch the "
                        "event loop, got 1.5"),
])
def test_bad_stall_options_are_one_line(options: dict, message: str) -> None:
    with pytest.raises(WatchOptionError) as caught:
        watch(**options)
    assert str(caught.value) == message


def test_the_watchdog_threshold_sees_every_stall_that_would_fail() -> None:
    from busmon.probes.watching.watch_options import WatchOptions

    assert WatchOptions().watchdog_ms() == 250
    assert WatchOptions(fail_on_stall_ms=40).watchdog_ms() == 40
    assert WatchOptions(fail_on_stall_ms=0).watchdog_ms() == 250   # any stall told fails
    assert WatchOptions(stall_ms=0).watchdog_ms() is None
    assert WatchOptions(stall_ms=0, fail_on_stall_ms=0).watchdog_ms() == 250
    assert WatchOptions(stall_ms=0, fail_on_stall_ms=250).watchdog_ms() == 250


# -- one shared watchdog thread per process ------------------------------------------------------

MANY = """
import asyncio, threading, pytest
from busmon.probes.observe.loopwatch import shared_watchdog

def watchdogs():
    return [t for t in threading.enumerate() if t.name == "busmon.loop-watchdog"]

@pytest.mark.parametrize("i", range(15))
async def test_async(i):
    dog = shared_watchdog()
    assert dog.starts == 1 and dog.armed == 1 and watchdogs() == [dog.thread]
    await asyncio.sleep(0)

def test_sync_after():
    dog = shared_watchdog()
    assert dog.starts == 1 and dog.armed == 0 and watchdogs() == [dog.thread]
"""


def test_one_watchdog_thread_per_process_never_a_leftover_of_the_first_test(pytester: pytest.Pytester) -> None:
    """A fresh process: the first watched async test starts the thread (before its baseline),
    the next ones reuse it; every test is judged clean (busmon_on_leak = raise: a leftover thread
    or heartbeat timer would fail it)."""
    pytester.makefile(".ini", pytest=INI)
    pytester.makepyfile(test_x=textwrap.dedent(MANY))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:randomly", "--busmon",
                                           "-o", "busmon_on_leak=raise", "-W", "error::busmon.LeakWarning")
    result.assert_outcomes(passed=16)
    assert "leaked" not in result.stdout.str()


NESTED = """
import asyncio, threading
from busmon.probes.watching.watch import watch

async def inner():
    async with watch(on_leak="raise"):
        await asyncio.sleep(0)

with watch(on_leak="raise", settle_timeout_s=0.2) as outer:  # no watchdog thread yet: started inside
    asyncio.run(inner())
assert outer.verdict == "clean", outer.result.report()
assert [t.name for t in threading.enumerate()].count("busmon.loop-watchdog") == 1
print("clean")
"""


def test_the_watchdog_thread_started_inside_an_outer_watch_is_not_its_leftover() -> None:
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", NESTED], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[1], check=False)
    assert out.returncode == 0 and out.stdout.strip() == "clean", out.stdout + out.stderr
