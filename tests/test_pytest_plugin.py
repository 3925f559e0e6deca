"""The pytest plugin, run the way users run it: inline test files in a pytester session.

Each case asserts the outcome pytest reports and the text a person reads. Leaking cases use a
short settle deadline (the leftover never exits, so every case waits it out in full).
"""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

ASYNCIO_AUTO = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""
ASYNCIO_STRICT = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""


def run(pytester: pytest.Pytester, source: str, *args: str, ini: str = ASYNCIO_AUTO) -> pytest.RunResult:
    pytester.makefile(".ini", pytest=ini)
    pytester.makepyfile(test_inline=textwrap.dedent(source))
    return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:textual-snapshot", "-p", "no:syrupy", *args)


# -- sync tests: threads ---------------------------------------------------------------------

SYNC = """
import threading, time, pytest

RELEASE = threading.Event()

@pytest.fixture(autouse=True, scope="module")
def release_at_the_end():
    yield
    RELEASE.set()

@pytest.mark.busmon(settle_timeout_s=0.2)
def test_leaks_a_thread():
    threading.Thread(target=RELEASE.wait, name="forgotten-worker", daemon=True).start()

@pytest.mark.busmon
def test_joins_its_thread():
    t = threading.Thread(target=lambda: None, name="joined")
    t.start()
    t.join()

@pytest.mark.busmon
def test_thread_takes_a_while():
    # the thread's own work takes 150 ms: it outlives the test, then exits while busmon waits
    threading.Thread(target=time.sleep, args=(0.15,), name="slow-finisher").start()

def test_not_watched_leaks():
    threading.Thread(target=RELEASE.wait, name="unwatched", daemon=True).start()
"""


def test_sync_leak_fails_at_teardown_with_the_thread_named(pytester: pytest.Pytester) -> None:
    result = run(pytester, SYNC)
    result.assert_outcomes(passed=4, errors=1)
    out = result.stdout.str()
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_leaks_a_thread*",
        "busmon: test_inline.py::test_leaks_a_thread leaked 1 thread",
        "waited up to 0.2 s, after the test's teardown, for what it started to exit; a plain count right "
        "at the end saw 1 new thread",   # a sync test: no loop, tasks are not judged nor counted
        "  thread forgotten-worker  leaked: still running after 2?? ms",
        "    now at threading.py:* in wait",
        "    stack (innermost last):",
        "*ERROR test_inline.py::test_leaks_a_thread - busmon: leaked 1 thread: forgott*",
    ])
    # the lingering thread passes, and the summary says it lingered; the unwatched leak is not judged
    assert "test_thread_takes_a_while" not in out.split("short test summary")[1]
    # (a joined thread's OS thread outlives join() a moment: busmon knows Python started it)
    result.stdout.fnmatch_lines(["busmon: 3 tests judged, 1 leaked, 1 clean once their leftovers exited "
                                 "(the slowest 1??.? ms: test_inline.py::test_thread_takes_a_while)"])
    assert "unwatched" not in out


def test_busmon_flag_judges_every_test(pytester: pytest.Pytester) -> None:
    result = run(pytester, SYNC, "--busmon", "-k", "not_watched or joins")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ERROR test_inline.py::test_not_watched_leaks - busmon: leaked 1 thre*"])


def test_marker_can_exempt_one_test_from_the_flag(pytester: pytest.Pytester) -> None:
    result = run(pytester, """
        import threading, pytest
        RELEASE = threading.Event()

        @pytest.mark.busmon(enabled=False)
        def test_known_leak():
            threading.Thread(target=RELEASE.wait, daemon=True).start()

        def test_release():
            RELEASE.set()
    """, "--busmon")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["busmon: 1 test judged"])


def test_failed_and_skipped_tests_are_not_judged_again(pytester: pytest.Pytester) -> None:
    result = run(pytester, """
        import threading, pytest
        RELEASE = threading.Event()

        @pytest.mark.busmon(settle_timeout_s=0.2)
        def test_fails_and_leaks():
            threading.Thread(target=RELEASE.wait, daemon=True).start()
            assert False, "the test's own failure"

        @pytest.mark.busmon
        def test_skipped():
            pytest.skip("not today")

        def test_release():
            RELEASE.set()
    """)
    result.assert_outcomes(failed=1, skipped=1, passed=1)
    assert "busmon: leaked" not in result.stdout.str()


def test_plugin_is_silent_when_not_asked(pytester: pytest.Pytester) -> None:
    result = run(pytester, SYNC, "-k", "not_watched")
    result.assert_outcomes(passed=1)
    assert not [line for line in result.stdout.lines if "busmon" in line and not line.startswith("plugins:")]


def test_plugin_can_be_switched_off(pytester: pytest.Pytester) -> None:
    result = run(pytester, SYNC, "-p", "no:busmon", "-k", "leaks_a_thread")
    # the marker is then unknown to pytest, and the leak is not judged
    result.assert_outcomes(passed=1)
    assert "busmon: leaked" not in result.stdout.str()


# -- options ---------------------------------------------------------------------------------

def test_ini_options_apply_and_marker_rules_add_to_them(pytester: pytest.Pytester) -> None:
    result = run(pytester, """
        import threading, pytest
        RELEASE = threading.Event()

        @pytest.mark.busmon(ignore_threads=["marker-*"])
        def test_both_ignored():
            threading.Thread(target=RELEASE.wait, name="ini-ignored", daemon=True).start()
            threading.Thread(target=RELEASE.wait, name="marker-ignored", daemon=True).start()

        @pytest.mark.busmon
        def test_judge_only_tasks():
            threading.Thread(target=RELEASE.wait, name="not-judged", daemon=True).start()

        def test_release():
            RELEASE.set()
    """, "-rA", ini=ASYNCIO_AUTO + "busmon_ignore_threads = ini-*\nbusmon_settle_timeout_s = 0.2\n")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*ERROR test_inline.py::test_judge_only_tasks - busmon: leaked 1 thread*"])

    result = run(pytester, """
        import threading, pytest
        RELEASE = threading.Event()

        @pytest.mark.busmon(judge=["tasks"])
        def test_threads_not_judged():
            threading.Thread(target=RELEASE.wait, name="not-judged", daemon=True).start()

        def test_release():
            RELEASE.set()
    """)
    result.assert_outcomes(passed=2)


def test_on_leak_warn_or_ignore_tells_without_failing(pytester: pytest.Pytester) -> None:
    """A suite adopting busmon step by step: leaks are told, tests still pass."""
    result = run(pytester, """
        import threading, pytest
        RELEASE = threading.Event()

        @pytest.mark.busmon
        def test_warned():
            threading.Thread(target=RELEASE.wait, name="warned-about", daemon=True).start()

        @pytest.mark.busmon(on_leak="ignore")
        def test_ignored():
            threading.Thread(target=RELEASE.wait, name="kept-quiet", daemon=True).start()

        def test_release():
            RELEASE.set()
    """, "-rP", ini=ASYNCIO_AUTO + "busmon_on_leak = warn\nbusmon_settle_timeout_s = 0.2\n")
    result.assert_outcomes(passed=3, warnings=1)
    result.stdout.fnmatch_lines([
        "*LeakWarning: busmon: leaked 1 thread: warned-about (-rP shows the report)",
        "*busmon after teardown*",
        "busmon: test_inline.py::test_warned leaked 1 thread",
        "*busmon after teardown*",
        "busmon: test_inline.py::test_ignored leaked 1 thread",
        "busmon: 2 tests judged, 2 leaked (1 warned of, 1 ignored: on_leak, not failed)",
    ])


@pytest.mark.parametrize(("ini", "marker", "message"), [
    ("busmon_settle_timeout_s = soon", "", "ERROR: pytest.ini: busmon_settle_timeout_s: expected a number of "
     "seconds ≥ 0, got 'soon'"),
    ("busmon_judge = tasks thredas", "", "ERROR: pytest.ini: busmon_judge: unknown kind 'thredas' (did you mean "
     "'threads'?); expected some of tasks, threads, timers, sockets, fds, processes"),
    ("", "settle_timeout=5", "ERROR: test_inline.py::test_x: @pytest.mark.busmon: unknown option "
     "'settle_timeout' (did you mean 'settle_timeout_s'?)"),
    ("", "ignore_tasks=5", "ERROR: test_inline.py::test_x: @pytest.mark.busmon: ignore_tasks: expected a "
     "pattern or a list of patterns, got 5"),
    ("", "'fast'", "ERROR: test_inline.py::test_x: @pytest.mark.busmon: takes options as keywords (e.g. "
     "settle_timeout_s=5), got 'fast'"),
    ("busmon_on_leak = fail", "", "ERROR: pytest.ini: busmon_on_leak: expected 'warn' | 'raise' | 'ignore', "
     "got 'fail'"),
])
def test_bad_options_are_one_line_usage_errors(pytester: pytest.Pytester, ini: str, marker: str,
                                               message: str) -> None:
    result = run(pytester, f"""
        import pytest

        @pytest.mark.busmon({marker})
        def test_x():
            pass
    """, ini=ASYNCIO_AUTO + ini + "\n")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.lines, result.stderr.str()
    assert "Traceback" not in result.stderr.str() + result.stdout.str()


# -- async tests: pytest-asyncio and anyio ---------------------------------------------------

#: a function fixture that cancels, at teardown, a task the test body started: busmon judges after
#: it, so the test passes (shared by the pytest-asyncio and anyio sources below)
FIXTURE_CLEANS_UP = """
@pytest.fixture
async def tasks_closed_at_teardown():
    tasks = []
    yield tasks
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

@pytest.mark.busmon
async def test_fixture_cleans_what_the_body_started(tasks_closed_at_teardown):
    tasks_closed_at_teardown.append(asyncio.create_task(asyncio.Event().wait(), name="fixture-owned"))
"""

ASYNC = """
import asyncio, pytest

async def takes_a_few_turns_to_stop(ev):
    try:
        await ev.wait()
    finally:  # cancelled: its cleanup still needs a few turns of the loop
        for _ in range(5):
            await asyncio.sleep(0)

HELD = []

@pytest.mark.busmon(settle_timeout_s=0.2, trace_creation=True)
async def test_leaks_a_task():
    HELD.append(asyncio.create_task(asyncio.Event().wait(), name="forgotten-task"))

@pytest.mark.busmon
async def test_cancels_without_awaiting():
    task = asyncio.create_task(takes_a_few_turns_to_stop(asyncio.Event()), name="slow-to-stop")
    await asyncio.sleep(0)
    task.cancel()   # and never awaited: it finishes after the test
""" + FIXTURE_CLEANS_UP


def test_pytest_asyncio_auto_mode(pytester: pytest.Pytester) -> None:
    result = run(pytester, ASYNC, "-rA")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines([
        "busmon: test_inline.py::test_leaks_a_task leaked 1 task",
        "*a plain count right at the end saw 1 new task and 0 new threads",
        "  task Event.wait (test_inline · forgotten-task)  leaked: still running after 2?? ms",
        "    now at asyncio/locks.py:* in wait",
        "    created at *test_inline.py:* in test_leaks_a_task",
        "busmon: test_inline.py::test_cancels_without_awaiting is clean",
        "*a plain count right at the end saw 1 new task and 0 new threads",
        "lingered (gone while busmon waited; not a failure):",
        "  task takes_a_few_turns_to_stop (test_inline · slow-to-stop): exited after * ms",
        "busmon: 3 tests judged, 1 leaked, 1 clean once their leftovers exited (the slowest *: "
        "test_inline.py::test_cancels_without_awaiting)",
        "*ERROR test_inline.py::test_leaks_a_task - busmon: leaked 1 task: forgott*",
    ])


def test_pytest_asyncio_strict_mode(pytester: pytest.Pytester) -> None:
    source = ASYNC.replace("@pytest.mark.busmon", "@pytest.mark.asyncio\n@pytest.mark.busmon").replace(
        "@pytest.fixture", "@pytest_asyncio.fixture").replace("import asyncio, pytest", "import asyncio, pytest, pytest_asyncio")
    result = run(pytester, source, ini=ASYNCIO_STRICT)
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*ERROR test_inline.py::test_leaks_a_task - busmon: leaked 1 task: forgott*"])


@pytest.mark.parametrize("scope", ["module", "session"])
def test_pytest_asyncio_shared_loop(pytester: pytest.Pytester, scope: str) -> None:
    """A module fixture's task lives across tests on the shared loop: it is baseline, never a
    leak; each test is judged on that loop, which stays open."""
    result = run(pytester, """
        import asyncio, pytest, pytest_asyncio

        pytestmark = pytest.mark.asyncio(loop_scope="SCOPE")

        @pytest_asyncio.fixture(scope="SCOPE", loop_scope="SCOPE")
        async def server():
            stop = asyncio.Event()
            task = asyncio.create_task(stop.wait(), name="module-server")
            yield task
            stop.set()
            await task

        @pytest.mark.busmon
        async def test_uses_the_server(server):
            assert not server.done()

        @pytest.mark.busmon(settle_timeout_s=0.2)
        async def test_leaks_on_the_shared_loop(server):
            server.leak = asyncio.create_task(asyncio.Event().wait(), name="left-on-module-loop")

        @pytest.mark.busmon
        async def test_the_loop_is_still_the_same(server):
            assert asyncio.get_running_loop() is server.get_loop()
    """.replace("SCOPE", scope))
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*ERROR test_inline.py::test_leaks_on_the_shared_loop - busmon: leaked 1 *"])
    assert "module-server" not in result.stdout.str()


ANYIO = """
import asyncio, pytest

pytestmark = pytest.mark.anyio

@pytest.fixture
def anyio_backend():
    return "asyncio"

HELD = []

@pytest.mark.busmon(settle_timeout_s=0.2)
async def test_leaks_a_task():
    HELD.append(asyncio.create_task(asyncio.Event().wait(), name="forgotten-task"))

@pytest.mark.busmon
async def test_clean():
    await asyncio.sleep(0)
""" + FIXTURE_CLEANS_UP


def test_anyio_plugin(pytester: pytest.Pytester) -> None:
    result = run(pytester, ANYIO, "-p", "no:asyncio", ini="[pytest]\n")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*ERROR test_inline.py::test_leaks_a_task - busmon: leaked 1 task: forgott*"])
    assert "_run_tests_and_fixtures" not in result.stdout.str()  # anyio's own runner task is not the test's


def test_anyio_beside_pytest_asyncio_strict(pytester: pytest.Pytester) -> None:
    result = run(pytester, ANYIO, ini=ASYNCIO_STRICT)
    result.assert_outcomes(passed=3, errors=1)


# -- the fixture ---------------------------------------------------------------------------------

def test_fixture_gives_the_verdict_so_far(pytester: pytest.Pytester) -> None:
    """check() / acheck() judge what the test left so far; what they reported is the test's to
    assert on and does not fail it again at teardown."""
    result = run(pytester, """
        import asyncio, threading, pytest

        def test_sync(busmon):
            release = threading.Event()
            threading.Thread(target=release.wait, name="asserted-on", daemon=True).start()
            busmon.options = busmon.options.merged({"settle_timeout_s": 0.1})
            result = busmon.check()
            assert result.verdict == "leaked"
            assert [x.name for x in result.leaked] == ["asserted-on"]
            release.set()

        async def test_async(busmon):
            release = asyncio.Event()
            task = asyncio.create_task(release.wait(), name="seen-mid-test")
            busmon.options = busmon.options.merged({"settle_timeout_s": 0.1})
            result = await busmon.acheck()
            assert [x.name for x in result.leaked] == ["seen-mid-test"]
            release.set()
            await task

        async def test_async_check_in_sync_style(busmon):
            with pytest.raises(RuntimeError, match="await busmon.acheck"):
                busmon.check()
    """)
    result.assert_outcomes(passed=3)


# -- markers at every level, switching off, and where the text goes ------------------------------

def test_markers_add_up_from_module_to_test(pytester: pytest.Pytester) -> None:
    """A module's or class's marker sets options for its tests; a test's own marker overrides
    values and adds ignore rules."""
    result = run(pytester, """
        import threading, pytest
        RELEASE = threading.Event()
        pytestmark = pytest.mark.busmon(ignore_threads=["module-*"], settle_timeout_s=0.2)

        class TestGroup:
            pytestmark = pytest.mark.busmon(ignore_threads=["class-*"])

            @pytest.mark.busmon(ignore_threads=["test-*"], judge="tasks, threads")
            def test_all_three_ignored(self):
                for name in ("module-1", "class-1", "test-1"):
                    threading.Thread(target=RELEASE.wait, name=name, daemon=True).start()

        def test_module_rule_only():
            threading.Thread(target=RELEASE.wait, name="test-2", daemon=True).start()

        def test_release():
            RELEASE.set()
    """)
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_module_rule_only*",
        "waited up to 0.2 s*",
        "*ERROR test_inline.py::test_module_rule_only - busmon: leaked 1 thread: test-*",
    ])
    assert "test_all_three_ignored - busmon" not in result.stdout.str()


def test_no_busmon_switches_it_off_but_for_the_fixture(pytester: pytest.Pytester) -> None:
    source = """
        import threading, pytest
        RELEASE = threading.Event()

        @pytest.mark.busmon(settle_timeout_s=0.2)
        def test_marked_leak():
            threading.Thread(target=RELEASE.wait, daemon=True).start()

        def test_asks_for_the_fixture(busmon):
            assert busmon.check().verdict == "clean"

        def test_release():
            RELEASE.set()
    """
    result = run(pytester, source, "--busmon", "--no-busmon")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["busmon: 1 test judged"])


def test_passing_test_shows_what_was_ignored_and_why_with_rP(pytester: pytest.Pytester) -> None:
    result = run(pytester, """
        import threading, pytest
        RELEASE = threading.Event()

        @pytest.mark.busmon(ignore_threads=["poller"])
        def test_with_a_known_poller():
            threading.Thread(target=RELEASE.wait, name="poller", daemon=True).start()

        def test_release():
            RELEASE.set()
    """, "-rP")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*busmon after teardown*", "busmon: test_inline.py::test_with_a_known_poller is clean",
                                 "ignored:", "  thread poller: ident *, native * (ignore rule 'poller')"])


def test_fixture_methods_say_which_one_to_use(pytester: pytest.Pytester) -> None:
    result = run(pytester, """
        import pytest

        def test_sync(busmon):
            with pytest.raises(RuntimeError, match="in a sync test: use busmon.check"):
                busmon.acheck()
    """)
    result.assert_outcomes(passed=1)


def test_under_xdist_the_reason_and_the_summary_survive(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    result = run(pytester, SYNC, "-n", "2", "-p", "xdist")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines([
        "busmon: test_inline.py::test_leaks_a_thread leaked 1 thread",
        "busmon: 3 tests judged, 1 leaked, 1 clean once their leftovers exited*",
        "*ERROR test_inline.py::test_leaks_a_thread - busmon: leaked 1 thread: forgott*",
    ])


def test_warnings_as_errors_make_a_warned_leak_fail(pytester: pytest.Pytester) -> None:
    """Under -W error a LeakWarning is an error: the test fails on it (never an INTERNALERROR)."""
    result = run(pytester, """
        import threading, pytest
        RELEASE = threading.Event()

        @pytest.mark.busmon(on_leak="warn", settle_timeout_s=0.2)
        def test_warned():
            threading.Thread(target=RELEASE.wait, name="warned-about", daemon=True).start()

        def test_release():
            RELEASE.set()
    """, "-W", "error::busmon.LeakWarning", "-rA")
    result.assert_outcomes(passed=2, errors=1)
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*ERROR test_inline.py::test_warned - busmon: leaked 1 thread: warned-about"])
    # the report is said once, as the failure (not again as a section, even under -rA)
    assert result.stdout.str().count("busmon: test_inline.py::test_warned leaked 1 thread") == 1, result.stdout.str()


def test_async_hypothesis_test_is_judged_on_its_loop(pytester: pytest.Pytester) -> None:
    pytest.importorskip("hypothesis")
    result = run(pytester, """
        import asyncio, pytest
        from hypothesis import given, settings, strategies as st

        HELD = []

        @pytest.mark.busmon(settle_timeout_s=0.2)
        @settings(max_examples=3, deadline=None)
        @given(st.integers())
        async def test_leaks_per_example(x):
            HELD.append(asyncio.create_task(asyncio.Event().wait(), name=f"example-{x}"))
    """)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["busmon: test_inline.py::test_leaks_per_example leaked 3 tasks"])


def test_every_bad_marker_is_told_at_once(pytester: pytest.Pytester) -> None:
    result = run(pytester, """
        import pytest

        @pytest.mark.busmon(settle=1)
        def test_a():
            pass

        @pytest.mark.busmon(judge="thread")
        def test_b():
            pass
    """)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.lines[:2] == [
        "ERROR: test_inline.py::test_a: @pytest.mark.busmon: unknown option 'settle' (options: settle_timeout_s, "
        "poll_ms, ignore_tasks, ignore_threads, ignore_sockets, ignore_processes, judge, trace_creation, "
        "on_leak, stall_ms, fail_on_stall_ms, enabled)",
        "test_inline.py::test_b: @pytest.mark.busmon: judge: unknown kind 'thread' (did you mean 'threads'?); "
        "expected some of tasks, threads, timers, sockets, fds, processes",
    ]


def test_unittest_cases(pytester: pytest.Pytester) -> None:
    """A TestCase is judged like a sync test; IsolatedAsyncioTestCase closes its own loop inside
    the test, so its tasks cannot be judged, and -rP says so."""
    result = run(pytester, """
        import asyncio, threading, unittest
        RELEASE = threading.Event()

        class Plain(unittest.TestCase):
            def test_leaks_a_thread(self):
                threading.Thread(target=RELEASE.wait, name="from-testcase", daemon=True).start()

        class Isolated(unittest.IsolatedAsyncioTestCase):
            async def test_on_its_own_loop(self):
                await asyncio.sleep(0)

        def test_release():
            RELEASE.set()
    """, "--busmon", "-rPE", "-o", "busmon_settle_timeout_s=0.2")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines([
        "*busmon after teardown*",
        "note: tasks not judged: unittest's IsolatedAsyncioTestCase runs each test on a loop of its own*",
        "*ERROR test_inline.py::Plain::test_leaks_a_thread - busmon: leaked 1 thre*",
    ])


def test_a_loop_busmon_cannot_find_is_said_not_a_broken_test(pytester: pytest.Pytester,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """If a harness changes under busmon (its loop fixture renamed), the test still runs and is
    judged for threads, sockets and processes; -rP says why its tasks were not."""
    import busmon.probes.watching.pytest_plugin as plugin

    def lost(*_: object) -> None:
        raise LookupError("fixture '_function_scoped_runner' not found")

    monkeypatch.setattr(plugin, "find_harness", lost)
    result = run(pytester, """
        import asyncio, pytest

        @pytest.mark.busmon
        async def test_async():
            await asyncio.sleep(0)
    """, "-rP")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["note: tasks not judged: the test's event loop was not found (LookupError: *"])


# -- fixtures: the baseline comes before the test's function fixtures -----------------------------

FIXTURES = """
import asyncio, pytest, pytest_asyncio

HELD = []

@pytest.fixture
async def forgets_its_task():
    HELD.append(asyncio.create_task(asyncio.Event().wait(), name="fixture-forgot"))
    yield

@pytest.fixture
async def stops_its_task():
    task = asyncio.create_task(asyncio.Event().wait(), name="fixture-stopped")
    yield
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

class Worker:
    \"\"\"A fixture-owned service whose worker task the test replaces (a restart).\"\"\"
    def __init__(self):
        self.task = asyncio.create_task(asyncio.Event().wait(), name="worker-1")
    async def restart(self):
        old, self.task = self.task, asyncio.create_task(asyncio.Event().wait(), name="worker-2")
        old.cancel()
    async def stop(self):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

@pytest.fixture
async def worker():
    w = Worker()
    yield w
    await w.stop()

@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def module_service():
    task = asyncio.create_task(asyncio.Event().wait(), name="module-service")
    yield task
    task.cancel()

@pytest.mark.busmon(settle_timeout_s=0.2)
async def test_a_fixture_that_never_stops_its_task(forgets_its_task):
    pass

@pytest.mark.busmon
async def test_a_fixture_that_stops_its_task(stops_its_task):
    pass

@pytest.mark.busmon
async def test_a_worker_replaced_and_stopped_by_its_fixture(worker):
    await worker.restart()

@pytest.mark.busmon(settle_timeout_s=0.2)
def test_a_sync_fixture_thread_never_joined(sync_thread):
    pass
"""

SYNC_FIXTURE = """
import threading

RELEASE = threading.Event()

@pytest.fixture(scope="session", autouse=True)
def release_at_exit():
    yield
    RELEASE.set()

@pytest.fixture
def sync_thread():
    threading.Thread(target=RELEASE.wait, name="fixture-thread", daemon=True).start()
    yield
"""


@pytest.mark.parametrize("loop_scope", ["function", "module"])
def test_what_a_function_fixture_starts_is_the_tests(pytester: pytest.Pytester, loop_scope: str) -> None:
    """A function fixture is the test's: what it starts and never stops fails the test; what it
    stops at teardown, or a worker the test replaced and the fixture stopped, is clean. A module
    fixture first set up for this test is the harness's, never the test's."""
    ini = ASYNCIO_AUTO.replace("= function", f"= {loop_scope}") + f"asyncio_default_test_loop_scope = {loop_scope}\n"
    source = FIXTURES + SYNC_FIXTURE + """
@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.busmon
async def test_first_user_of_a_module_fixture(module_service):
    assert not module_service.done()
"""
    result = run(pytester, source, "-rA", ini=ini)
    result.assert_outcomes(passed=5, errors=2)
    result.stdout.fnmatch_lines([
        "busmon: test_inline.py::test_a_fixture_that_never_stops_its_task leaked 1 task",
        "  task Event.wait (test_inline · fixture-forgot)  leaked: *",
        "busmon: test_inline.py::test_a_sync_fixture_thread_never_joined leaked 1 thread",
        "  thread fixture-thread  leaked: *",
        "busmon: 5 tests judged, 2 leaked*",
    ])
    out = result.stdout.str()
    # the replaced worker and its successor both exited by the verdict; the module fixture's task
    # is the harness's: neither is named as a leak
    assert "module-service" not in out
    assert not [line for line in result.stdout.lines if "worker-" in line and "leaked" in line], out
