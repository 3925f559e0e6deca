"""trio's runtime threads under busmon's pytest plugin, and where a thread was started.

trio keeps one process-wide cache of worker threads (idle ones exit after 10 s), and in guest
mode, as anyio runs trio tests, waits for I/O in one of them: machinery while idle or in that
wait, the test's while running a job it submitted. With ``trace_creation`` a thread names the
line that called ``Thread.start()`` (for a library's thread, also the code that made the library
start it). Inline test files in a pytester session, as users run them.
"""

from __future__ import annotations

import concurrent.futures
import queue
import textwrap
import threading
import time

import pytest

from busmon.probes.observe import thread_sites
from busmon.probes.observe.runtime_pools import TRIO_CACHE, TRIO_GUEST_IO, machinery_reason, runtime_pool, trio_worker_state

trio = pytest.importorskip("trio")
pytest.importorskip("anyio")

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""
PLUGINS_OFF = ("-p", "no:cacheprovider", "-p", "no:textual-snapshot", "-p", "no:syrupy")


def write(pytester: pytest.Pytester, source: str) -> None:
    pytester.makefile(".ini", pytest=INI)
    pytester.makepyfile(test_inline=textwrap.dedent(source))


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    write(pytester, source)
    return pytester.runpytest(*PLUGINS_OFF, *args)


#: how many trio cache workers are alive: a test that needs new ones submits more jobs than that
TRIO_HEADER = """
import threading
import anyio, pytest, trio

pytestmark = pytest.mark.anyio

@pytest.fixture
def anyio_backend():
    return "trio"

def trio_workers():
    target = "WorkerThread._work"
    return [t for t in threading.enumerate() if getattr(getattr(t, "_target", None), "__qualname__", "") == target]
"""

CLEAN = TRIO_HEADER + """
@pytest.mark.parametrize("round", [1, 2])
async def test_worker_threads(round):
    # more jobs at once than trio has workers: new workers start, in this test
    jobs = len(trio_workers()) + 2
    together = threading.Barrier(jobs)
    async with anyio.create_task_group() as tg:
        for _ in range(jobs):
            tg.start_soon(anyio.to_thread.run_sync, together.wait)
    assert await anyio.to_thread.run_sync(lambda: 41) == 41
"""


def test_a_clean_anyio_test_on_trio_with_worker_threads_passes(pytester: pytest.Pytester) -> None:
    # twice in one session: the second round finds the first's workers idle in trio's cache
    result = run(pytester, CLEAN, "--busmon", "-rP")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "leaked" not in out, out
    # the idle workers the test started are machinery, said so with the reason
    result.stdout.fnmatch_lines([
        "ignored:",
        "  thread Trio thread * (trio.thread_cache): ident *, native * (runtime: trio's thread cache, idle; "
        "it exits after 10 s idle (the cache is the process's, shared by every trio run))",
    ])
    # what is and is not judged, and no count of tasks that were not looked at
    result.stdout.fnmatch_lines([
        "note: tasks and timers not judged, nor the loop watched for stalls: anyio runs this test on trio, "
        "and busmon judges asyncio's; "
        "threads, sockets, descriptors and child processes are judged; trio's thread-cache workers count "
        "as runtime machinery while idle or waiting for trio's I/O (guest mode), and as the test's while "
        "running a job it submitted",
    ])
    result.stdout.fnmatch_lines(["*a plain count right at the end saw * new thread*"])
    result.stdout.no_fnmatch_line("*a plain count right at the end saw*task*")
    result.stdout.fnmatch_lines(["busmon: 2 tests judged"])


BUSY = TRIO_HEADER + """
RELEASE = threading.Event()

def blocked_job():
    RELEASE.wait()

async def test_warms_the_cache():
    # leaves at least one idle worker in trio's cache: the next test's job runs on it
    await anyio.to_thread.run_sync(lambda: None)

@pytest.mark.busmon(settle_timeout_s=0.3)
async def test_leaves_a_job_running():
    trio.lowlevel.start_thread_soon(blocked_job, lambda outcome: None)

@pytest.mark.busmon(enabled=False)
def test_release():
    RELEASE.set()
"""


def test_a_trio_worker_still_running_the_tests_job_is_leaked_with_its_stack(pytester: pytest.Pytester) -> None:
    # the worker was idle in the cache at the baseline: by identity it is no new thread, but the
    # job it runs at the deadline was submitted since
    result = run(pytester, BUSY, "--busmon")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines([
        "busmon: test_inline.py::test_leaves_a_job_running leaked 1 thread",
        "waited up to 0.3 s, after the test's teardown, for what it started to exit*",
        "",
        "  thread Trio thread * (trio.thread_cache)  leaked: still running after *",
        "    ident *, native * (a thread of trio's thread cache, still running a job at the deadline)",
        "    now at *",
        "    stack (innermost last):",
        "*trio/_core/_thread_cache.py:* in _work",
        "*",
        "*test_inline.py:* in blocked_job",
    ])
    result.stdout.fnmatch_lines(["busmon: 2 tests judged, 1 leaked"])


GUEST_START = TRIO_HEADER + """
GO = threading.Event()

@pytest.mark.busmon(trace_creation=True)
async def test_starts_workers():
    # every idle worker and one more take a job; then trio waits for I/O and needs a new one
    for _ in range(len(trio_workers()) + 1):
        trio.lowlevel.start_thread_soon(GO.wait, lambda outcome: None)
    await trio.sleep(0.05)
    GO.set()
"""


def test_trios_guest_mode_io_thread_names_guest_tick(pytester: pytest.Pytester) -> None:
    # in a process of its own: in-process, the outer test's frames would be the first outside
    # the libraries, under anyio's runner
    write(pytester, GUEST_START)
    result = pytester.runpytest_subprocess(*PLUGINS_OFF, "-rP")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "  thread Trio thread * (trio.thread_cache): *(runtime: trio's thread cache*; "
        "started at trio/_core/_thread_cache.py:* in __init__ from trio/_core/_run.py:* in guest_tick",
    ])
    result.stdout.fnmatch_lines([
        "  thread Trio thread * (trio.thread_cache): *(runtime: trio's thread cache*; "
        "started at trio/_core/_thread_cache.py:* in __init__ from *test_inline.py:* in test_starts_workers",
    ])


# -- the states of a trio worker, in a guest run hosted here ---------------------------------

def _poll(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        threading.Event().wait(0.005)   # the poll interval (a thread's frames have no event)
    return False


def test_trio_worker_states_in_guest_mode() -> None:
    """Idle in the cache and waiting for trio's I/O are machinery; running a job is not."""
    calls: queue.SimpleQueue = queue.SimpleQueue()
    done: list = []
    seen: dict[str, str | None] = {}
    release = threading.Event()

    def job() -> None:
        release.wait()

    def workers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if runtime_pool(t) == TRIO_CACHE]

    def observe(token: trio.lowlevel.TrioToken, scope: trio.CancelScope) -> None:
        try:
            assert _poll(lambda: any(trio_worker_state(t) == "io" for t in workers()))
            io = next(t for t in workers() if trio_worker_state(t) == "io")
            seen["io"] = machinery_reason(io, TRIO_CACHE)
            busy = [t for t in workers() if trio_worker_state(t) == "job"]
            seen["job"] = machinery_reason(busy[0], TRIO_CACHE) if busy else "no busy worker"
            release.set()
            assert _poll(lambda: not any(trio_worker_state(t) == "job" for t in workers()))
            seen["idle"] = machinery_reason(busy[0], TRIO_CACHE)
        finally:
            release.set()
            token.run_sync_soon(scope.cancel)

    async def main() -> None:
        with trio.CancelScope() as scope:
            trio.lowlevel.start_thread_soon(job, lambda outcome: None)
            watcher = threading.Thread(target=observe, args=(trio.lowlevel.current_trio_token(), scope))
            watcher.start()
            await trio.sleep_forever()
        watcher.join()

    trio.lowlevel.start_guest_run(main, run_sync_soon_threadsafe=calls.put, done_callback=done.append)
    while not done:
        calls.get(timeout=10)()
    done[0].unwrap()
    assert seen["io"] == TRIO_GUEST_IO
    assert seen["job"] is None            # the test's job: waited for, leaked at the deadline
    assert seen["idle"] == ("runtime: trio's thread cache, idle; it exits after 10 s idle "
                            "(the cache is the process's, shared by every trio run)")


def test_a_trio_worker_delivering_its_last_result_is_idle() -> None:
    """A worker puts itself on the idle list before it delivers its result: from then on the
    next job may be handed to it, so it is idle (and a baseline's idle worker), though its
    frames are still in ``_handle_job``."""
    ran_on: list[threading.Thread] = []
    delivering, gate = threading.Event(), threading.Event()

    def deliver(outcome: object) -> None:
        delivering.set()
        gate.wait()

    trio.lowlevel.start_thread_soon(lambda: ran_on.append(threading.current_thread()), deliver)
    try:
        assert delivering.wait(5)
        [worker] = ran_on
        assert runtime_pool(worker) == TRIO_CACHE
        assert trio_worker_state(worker) == "idle"
    finally:
        gate.set()


def test_a_thread_named_trio_is_no_trio_worker() -> None:
    # by what it runs, never by its name alone
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="Trio thread 99")
    t.start()
    try:
        assert runtime_pool(t) is None
    finally:
        stop.set()
        t.join()


# -- where a thread was started --------------------------------------------------------------

STARTS = """
import concurrent.futures, threading, pytest

RELEASE = threading.Event()

@pytest.fixture(autouse=True, scope="module")
def release_at_the_end():
    yield
    RELEASE.set()

@pytest.mark.busmon(settle_timeout_s=0.2)
def test_starts_its_own():
    threading.Thread(target=RELEASE.wait, name="own").start()

@pytest.mark.busmon(settle_timeout_s=0.2)
def test_a_library_starts_it():
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pooled")
    pool.submit(RELEASE.wait)
    pool.shutdown(wait=False)

class Subclassed(threading.Thread):
    def start(self):
        super().start()

@pytest.mark.busmon(settle_timeout_s=0.2)
def test_a_subclass_overrides_start():
    Subclassed(target=RELEASE.wait, name="subclassed").start()

@pytest.mark.busmon(settle_timeout_s=2)
def test_lingers():
    done = threading.Event()
    threading.Thread(target=done.wait, args=(0.05,), name="brief").start()
"""


def test_trace_creation_names_the_line_that_started_a_thread(pytester: pytest.Pytester) -> None:
    result = run(pytester, STARTS, "-rP", "-o", "busmon_trace_creation=true")
    result.assert_outcomes(passed=4, errors=3)
    result.stdout.fnmatch_lines([
        "  thread own  leaked: still running after *",
        "*",
        "    started at *test_inline.py:12 in test_starts_its_own",
    ])
    # a library's thread: the line in the library, and the test's line that made it start one
    result.stdout.fnmatch_lines([
        "  thread pooled_0 (pooled)  leaked: still running after *",
        "*",
        "    started at concurrent/futures/thread.py:* in _adjust_thread_count from "
        "*test_inline.py:17 in test_a_library_starts_it",
    ])
    # a subclass's own start() is not where it was started: its caller is
    result.stdout.fnmatch_lines(["    started at *test_inline.py:26 in test_a_subclass_overrides_start"])
    result.stdout.fnmatch_lines(["  thread brief: exited after *; started at *test_inline.py:31 in test_lingers"])


def test_the_verdict_is_the_same_with_tracing_off(pytester: pytest.Pytester) -> None:
    result = run(pytester, STARTS, "-rP")
    result.assert_outcomes(passed=4, errors=3)
    assert "started at" not in result.stdout.str()


def test_thread_start_is_put_back_and_threads_started_meanwhile_run() -> None:
    """Install and uninstall while other threads start threads: every start works, and
    ``Thread.start`` is threading's own again afterwards."""
    original = threading.Thread.start
    stop = threading.Event()
    ran: list[int] = []

    def starter(n: int) -> None:
        while not stop.is_set():
            t = threading.Thread(target=ran.append, args=(n,))
            t.start()
            t.join()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(starter, n) for n in range(4)]
        for _ in range(200):
            thread_sites.install()
            thread_sites.install()      # watches overlap: the wrapper stays until the last one ends
            thread_sites.uninstall()
            assert threading.Thread.start is not original
            thread_sites.uninstall()
            assert threading.Thread.start is original
        stop.set()
        for f in futures:
            f.result(timeout=10)
    assert len(ran) >= 4
    assert threading.Thread.start is original
