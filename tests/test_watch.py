"""watch(): busmon's verdict around a block or a function, on the caller's own loop or none."""

from __future__ import annotations

import _thread
import asyncio
import gc
import socket
import subprocess
import sys
import threading
import time
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from busmon.probes.observe.census import Census
from busmon.probes.verdict.ignore import IgnoreRules
from busmon.probes.verdict.settle import SettleWatch
from busmon.probes.observe.thread_births import ThreadBirths
from busmon.probes.watching.watch import LeakError, LeakWarning, watch
from busmon.probes.watching.watch_options import OPTION_NAMES, WatchOptionError, check_options

SHORT = 0.2  # settle deadline for blocks that leak on purpose (they wait it out in full)


@pytest.fixture
def release() -> threading.Event:
    ev = threading.Event()
    yield ev
    ev.set()


def test_sync_block_leaking_a_thread(release: threading.Event) -> None:
    with watch(settle_timeout_s=SHORT, on_leak="ignore") as w:
        threading.Thread(target=release.wait, name="left-behind", daemon=True).start()
    assert w.verdict == "leaked"
    [x] = w.result.leaked
    assert (x.kind, x.name, x.state) == ("thread", "left-behind", "leaked")
    assert any("in wait" in frame for frame in x.stack)
    assert w.result.at_end == {"threads": 1}   # no loop: tasks are not judged, nor counted
    report = w.result.report()
    assert report.splitlines()[0] == "busmon: the watched code leaked 1 thread"
    assert "  thread left-behind  leaked: still running after" in report


def test_sync_block_whose_thread_finishes_late_is_clean() -> None:
    done = threading.Event()

    def work() -> None:
        done.wait(5)

    with watch() as w:
        t = threading.Thread(target=work, name="finishing")
        t.start()
        threading.Timer(0.05, done.set).start()  # the work's own end, 50 ms on
    t.join()
    assert w.verdict == "clean", w.result.report()
    assert "finishing" in [x.name for x in w.result.lingered]


def test_on_leak_warns_by_default_and_raises_when_asked(release: threading.Event) -> None:
    with pytest.warns(LeakWarning, match="leaked 1 thread"):
        with watch(settle_timeout_s=SHORT):
            threading.Thread(target=release.wait, daemon=True).start()
    with pytest.raises(LeakError, match="busmon: the watched code leaked 1 thread") as caught:
        with watch(settle_timeout_s=SHORT, on_leak="raise"):
            threading.Thread(target=release.wait, daemon=True).start()
    assert caught.value.result.verdict == "leaked"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with watch(settle_timeout_s=SHORT, on_leak="ignore") as w:
            threading.Thread(target=release.wait, daemon=True).start()
    assert w.verdict == "leaked"


def test_a_block_that_raises_is_not_judged_and_leaves_nothing_installed() -> None:
    frozen = gc.get_freeze_count()
    w = watch()
    with pytest.raises(ZeroDivisionError):
        with w:
            1 / 0
    assert w.result is None and w.verdict is None
    assert gc.get_freeze_count() == frozen


def test_sync_with_inside_a_coroutine_says_use_async_with() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError, match="use 'async with watch\\(\\)'"):
            with watch():
                pass

    asyncio.run(main())


def test_async_block_on_its_own_loop() -> None:
    async def slow_to_stop(ev: asyncio.Event) -> None:
        try:
            await ev.wait()
        finally:
            for _ in range(3):
                await asyncio.sleep(0)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        factory = loop.get_task_factory()
        keep = asyncio.Event()
        async with watch(settle_timeout_s=SHORT, on_leak="ignore", trace_creation=True) as w:
            left = asyncio.create_task(keep.wait(), name="left-running")
            quitter = asyncio.create_task(slow_to_stop(asyncio.Event()), name="cancelled-unawaited")
            await asyncio.sleep(0)
            quitter.cancel()
        assert w.verdict == "leaked"
        [x] = w.result.leaked
        assert (x.kind, x.name, x.detail) == ("task", "left-running", "Event.wait")
        assert x.created_at and "test_watch.py" in x.created_at
        assert [y.name for y in w.result.lingered] == ["cancelled-unawaited"]
        assert w.result.at_end["tasks"] == 2   # a plain count would have blamed both
        # the loop is as it was: no task factory, no wrapped instance methods
        assert loop.get_task_factory() is factory
        assert not {"create_connection", "subprocess_exec"} & set(vars(loop))
        keep.set()
        await left

    asyncio.run(main())


def test_identity_not_count_a_replaced_task_is_a_new_one() -> None:
    async def main() -> None:
        stop = asyncio.Event()
        old = asyncio.create_task(stop.wait(), name="old")
        await asyncio.sleep(0)
        async with watch(settle_timeout_s=SHORT, on_leak="ignore") as w:
            old.cancel()
            new = asyncio.create_task(stop.wait(), name="replacement")
            await asyncio.sleep(0)
        assert len(asyncio.all_tasks()) == 2   # main + one waiter: the count did not change
        assert [x.name for x in w.result.leaked] == ["replacement"]
        stop.set()
        await new

    asyncio.run(main())


def test_ignore_rules_and_kinds() -> None:
    async def main() -> None:
        stop = asyncio.Event()
        async with watch(settle_timeout_s=SHORT, ignore_tasks=["Event.wait"]) as w:
            t = asyncio.create_task(stop.wait())
        assert w.verdict == "clean"
        assert [x.state for x in w.result.leftovers] == ["ignored"]
        async with watch(settle_timeout_s=SHORT, judge=["threads", "sockets"]) as w2:
            t2 = asyncio.create_task(stop.wait())
        assert w2.verdict == "clean" and w2.leftovers == ()
        stop.set()
        await asyncio.gather(t, t2)

    asyncio.run(main())


def test_decorator_watches_each_call() -> None:
    guard = watch(settle_timeout_s=SHORT, on_leak="raise")
    kept: list[asyncio.Task] = []

    @guard
    async def leaks(stop: asyncio.Event) -> str:
        kept.append(asyncio.create_task(stop.wait(), name="from-decorated"))
        return "value"

    @guard
    def clean(x: int) -> int:
        return x + 1

    async def main() -> None:
        stop = asyncio.Event()
        with pytest.raises(LeakError, match="leaks leaked 1 task"):
            await leaks(stop)
        assert guard.result.label.endswith("leaks")
        stop.set()
        await kept[0]

    asyncio.run(main())
    assert clean(1) == 2 and guard.verdict == "clean"
    assert clean.__name__ == "clean"


def test_sockets_and_child_processes_left_by_a_sync_block() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with watch(settle_timeout_s=SHORT, on_leak="ignore") as w:
            conn = socket.create_connection(("127.0.0.1", port))
            child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                     stdin=subprocess.PIPE)
        try:
            kinds = sorted({x.kind for x in w.result.leaked})
            assert kinds == ["fd", "process", "socket"], w.result.report()
            sock = next(x for x in w.result.leaked if x.kind == "socket")
            assert sock.name == f"tcp → 127.0.0.1:{port}"
            proc = next(x for x in w.result.leaked if x.kind == "process")
            assert proc.name.startswith(f"pid {child.pid}:")
        finally:
            conn.close()
            child.stdin.close()
            child.wait(10)
        with watch(settle_timeout_s=SHORT) as w:
            socket.create_connection(("127.0.0.1", port)).close()
        assert w.verdict == "clean", w.result.report()


@pytest.mark.parametrize(("options", "message"), [
    ({"settle_timeout": 1}, "watch(): unknown option 'settle_timeout' (did you mean 'settle_timeout_s'?)"),
    ({"settle_timeout_s": -1}, "watch(): settle_timeout_s: expected a number of seconds ≥ 0, got -1"),
    ({"on_leak": "fail"}, "watch(): on_leak: expected 'warn' | 'raise' | 'ignore', got 'fail'"),
    ({"judge": ["task"]}, "watch(): judge: unknown kind 'task' (did you mean 'tasks'?); expected some of "
                          "tasks, threads, timers, sockets, fds, processes"),
    ({"poll_ms": 0.5}, "watch(): poll_ms: expected a whole number of milliseconds ≥ 1, got 0.5"),
    ({"poll_ms": float("inf")}, "watch(): poll_ms: expected a whole number of milliseconds ≥ 1, got inf"),
])
def test_bad_options_are_one_line(options: dict, message: str) -> None:
    with pytest.raises(WatchOptionError) as caught:
        watch(**options)
    assert str(caught.value) == message


VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8),
                   st.lists(st.text(max_size=5), max_size=3), st.lists(st.integers(), max_size=2),
                   st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(OPTION_NAMES + ("bogus",)), value=VALUES)
def test_any_option_value_is_accepted_or_refused_in_one_line(name: str, value: object) -> None:
    try:
        checked = check_options({name: value}, "where")
    except WatchOptionError as exc:
        assert str(exc).startswith("where: ") and "\n" not in str(exc)
    else:
        assert set(checked) == {name}



def test_thread_births_notes_the_threads_python_starts_while_installed() -> None:
    births = ThreadBirths()
    assert births.install()
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    births.uninstall()
    later = threading.Thread(target=lambda: None)
    later.start()
    later.join()
    assert t.native_id in births.native_ids and later.native_id not in births.native_ids
    assert threading.getprofile() is None

    def someone_elses(*_: object) -> None:
        return None

    threading.setprofile(someone_elses)
    try:
        assert not ThreadBirths().install()
        assert threading.getprofile() is someone_elses
    finally:
        threading.setprofile(None)


def test_an_os_thread_python_started_is_not_a_native_leftover() -> None:
    """A thread with no threading.Thread object (``_thread.start_new_thread``) is what busmon
    calls native; told that Python started it (as a joined thread's lingering OS thread is),
    the settle watch does not count it."""
    started, release = threading.Event(), threading.Event()
    native: list[int] = []

    def body() -> None:
        native.append(threading.get_native_id())
        started.set()
        release.wait()

    baseline = Census.take(None)
    _thread.start_new_thread(body, ())
    started.wait(5)
    try:
        def judge(python_natives: set[int] | None) -> list[str]:
            sw = SettleWatch(baseline, Census.take(None), time.monotonic(), timeout_s=0.05, poll_ms=10,
                             exclude=set(), loop=None, python_natives=python_natives, final_census=False,
                             unfreeze=False)
            return [f"{x.name}:{x.state}" for x in sw.verdict_blocking(IgnoreRules()).leftovers]

        assert judge(None) == [f"native-{native[0]}:leaked"]
        assert judge({native[0]}) == []
    finally:
        release.set()


def test_an_ignored_leftover_is_not_waited_for(release: threading.Event) -> None:
    """Its verdict is known at once: settling ends when everything else has exited."""
    with watch(settle_timeout_s=60, ignore_threads=["background-*"]) as w:
        threading.Thread(target=release.wait, name="background-poller", daemon=True).start()
    assert w.verdict == "clean"
    assert [x.state for x in w.leftovers] == ["ignored"]
    assert w.result.settled   # ended because nothing else was pending, not at the 60 s deadline
    with watch(settle_timeout_s=SHORT, on_leak="ignore") as w:
        threading.Thread(target=release.wait, name="background-poller", daemon=True).start()
    assert not w.result.settled


def test_anyio_idle_worker_thread_is_runtime_machinery() -> None:
    anyio = pytest.importorskip("anyio")

    async def main() -> None:
        async with watch(settle_timeout_s=SHORT) as w:
            await anyio.to_thread.run_sync(lambda: None)
        [x] = w.leftovers
        assert (x.name, x.state) == ("AnyIO worker thread", "ignored")
        assert "runtime: anyio's worker threads, idle" in x.detail

    anyio.run(main)


def test_watch_without_parentheses_and_a_positional_mistake() -> None:
    @watch
    def plain(x: int) -> int:
        return 2 * x

    assert plain(2) == 4 and plain.__name__ == "plain"
    with pytest.raises(TypeError, match="takes options as keywords"):
        watch(5)


def test_sockets_ignored_by_host() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with watch(settle_timeout_s=SHORT, ignore_sockets=["127.0.0.1"], judge=["sockets"]) as w:
            conn = socket.create_connection(("127.0.0.1", port))
        conn.close()
    assert w.verdict == "clean"
    [x] = w.leftovers
    assert (x.kind, x.state) == ("socket", "ignored") and "ignore rule '127.0.0.1'" in x.detail
