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
    result = run(pytester, BLOCKS, "-W", "error::probes.watch.StallWarning", ini=ERROR_FOR_ALL)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["ERROR test_inline.py::test_blocks - busmon: the event loop was blocked *"])
