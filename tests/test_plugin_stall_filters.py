"""A stall is a finding about the test's code, not busmon's verdict on what it left running: a
suite's blanket ``-W error`` (``filterwarnings = error``, as httpx's suite has) does not turn it
into a failure, while a filter naming ``StallWarning`` does, and so does ``fail_on_stall_ms``."""

from __future__ import annotations

import pytest

from tests.test_pytest_plugin import run

pytest_plugins = ["pytester"]

BLOCKS = """
import time, pytest

@pytest.mark.busmon
async def test_blocks():
    time.sleep(0.3)
"""
ERROR_FOR_ALL = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"


def test_a_blanket_error_filter_keeps_the_outcome_and_tells_the_stall(pytester: pytest.Pytester) -> None:
    result = run(pytester, BLOCKS, "-rP", ini=ERROR_FOR_ALL)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "*busmon stalls, setup to teardown*",
        "stall 1: * ms, during the test, at *test_inline.py:* in test_blocks: time.sleep(0.3)",
        "busmon: 1 test judged, 1 blocked its event loop (the longest * ms: test_inline.py::test_blocks; -rP shows where)",
    ])


def test_a_filter_naming_stallwarning_fails_the_test(pytester: pytest.Pytester) -> None:
    result = run(pytester, BLOCKS, "-W", "error::busmon.StallWarning", ini=ERROR_FOR_ALL)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["ERROR test_inline.py::test_blocks - busmon: the event loop was blocked *"])


def test_a_stall_named_by_the_step_it_blocked_and_the_section_by_its_test(pytester: pytest.Pytester) -> None:
    """A fixture's block is told as the fixture's (set up, torn down), not the test's; the section
    says which test it belongs to; a failure made by a filter says so, and the summary counts it."""
    result = run(pytester, """
        import time, pytest, pytest_asyncio

        @pytest_asyncio.fixture
        async def slow_fixture():
            time.sleep(0.3)
            yield
            time.sleep(0.3)

        @pytest.mark.busmon
        async def test_uses_a_slow_fixture(slow_fixture):
            pass

        @pytest.mark.busmon
        async def test_blocks_itself():
            time.sleep(0.3)
    """, "-rA", "-W", "error::busmon.StallWarning")
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines([
        "busmon: test_inline.py::test_uses_a_slow_fixture blocked its event loop",
        "busmon: 2 stalls of the event loop (it ran nothing for 250 ms or more); a failure (a warning filter "
        "makes StallWarning an error)",
    ])
    # longest first: the two sleeps of 0.3 s come in either order, each named by its step
    for step in ("set up", "torn down"):
        result.stdout.fnmatch_lines([f"stall ?: * ms, while the test's fixtures were {step}, at *test_inline.py:* in "
                                     "slow_fixture: time.sleep(0.3)"])
    result.stdout.fnmatch_lines([
        "busmon: test_inline.py::test_blocks_itself blocked its event loop",
        "stall 1: * ms, during the test, at *test_inline.py:* in test_blocks_itself: time.sleep(0.3)",
    ])
    result.stdout.fnmatch_lines(["busmon: 2 tests judged, 2 blocked their event loop, 2 failed on it (the longest *"])


async def test_watch_report_tells_the_stalls_too() -> None:
    import time

    from busmon.probes.watching.watch import watch

    with pytest.warns(Warning):
        async with watch(on_leak="ignore") as w:
            time.sleep(0.3)
    assert w.result is not None and w.result.stalls
    report = w.result.report()
    assert "is clean" in report and "1 stall of the event loop" in report and "time.sleep(0.3)" in report
