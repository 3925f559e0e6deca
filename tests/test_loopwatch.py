"""LoopWatch on a real loop in its own thread: lag, stalls caught mid-block, own work, stop.

The loop is blocked on purpose inside callbacks on the watched loop (``time.sleep``, a wait
on an event, a C call that keeps the GIL); the test thread waits for results by events or by
polling with a deadline, never by sleeping.
"""

from __future__ import annotations

import asyncio
import ctypes
import sys
import threading
import time
from typing import Callable, Iterator

import pytest

from busmon.probes.observe.loopwatch import (WATCHDOG_THREAD_NAME, Frame, LoopWatch, Stall, _walk, blocking_frame,
                              loop_is_idle, shared_watchdog)

DEADLINE_S = 10.0
THIS_FILE = "tests/test_loopwatch.py"
_NO = Stall("", 0.0, 0.0, "", "unknown", ())  # ``watch.ongoing or _NO``: no stall right now


def wait_until(predicate: Callable[[], object], timeout: float = DEADLINE_S) -> None:
    """Poll ``predicate`` until true; fail at the deadline."""
    deadline = time.monotonic() + timeout
    idle = threading.Event()
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        idle.wait(0.005)


def on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    """Run ``fn`` on the loop and return once it has run."""
    done = threading.Event()

    def run() -> None:
        try:
            fn()
        finally:
            done.set()

    loop.call_soon_threadsafe(run)
    assert done.wait(DEADLINE_S)


def beats_pass(watch: LoopWatch, n: int = 3) -> None:
    """Wait until ``n`` more beats ran: whatever the loop was doing has been measured."""
    target = watch.beats + n
    wait_until(lambda: watch.beats >= target)


def sleep_quarter() -> None:
    time.sleep(0.25)


def sleep_ms(ms: float) -> None:
    time.sleep(ms / 1000)


#: libc called through PyDLL keeps the GIL for the whole call, as a long C call (a big sort,
#: json.dumps) does: no other thread, the watchdog included, runs meanwhile
_LIBC = ctypes.PyDLL(None)


def hold_gil(us: int, then_s: float) -> None:
    _LIBC.usleep(us)
    until = time.perf_counter() + then_s  # then some Python in the caller, as after most calls
    while time.perf_counter() < until:
        pass


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-arena", daemon=True)
    thread.start()
    yield loop
    if not loop.is_closed():
        loop.call_soon_threadsafe(loop.stop)
        thread.join(DEADLINE_S)
        loop.close()


def start_loop(name: str) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()
    return loop, thread


def end_loop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join(DEADLINE_S)
    loop.close()


@pytest.fixture(params=["dedicated", "shared"])
def watch(request: pytest.FixtureRequest, loop: asyncio.AbstractEventLoop) -> Iterator[LoopWatch]:
    """Every test on both: a thread of its own (``busmon play``) and the process's shared one."""
    w = LoopWatch(loop, shared=request.param == "shared")
    w.start()
    beats_pass(w, 2)
    yield w
    w.stop()


def test_a_quarter_second_block_is_one_stall_naming_the_sleep(watch, loop):
    t0 = time.monotonic()
    watch.set_phase("publish")
    on_loop(loop, sleep_quarter)
    beats_pass(watch)
    stalls = watch.stalls_since(t0)
    assert len(stalls) == 1, stalls
    stall = stalls[0]
    assert 240 <= stall.duration_ms < 400
    assert stall.phase == "publish"
    line = sleep_quarter.__code__.co_firstlineno + 1
    assert stall.blocking == f"{THIS_FILE}:{line} in sleep_quarter: time.sleep(0.25)"
    assert stall.component == "tests"
    assert stall.samples >= 1
    assert stall.stack[-1] == f"{THIS_FILE}:{line} in sleep_quarter"
    assert stall.started_at >= t0 - 0.1
    assert stall.as_dict()["stack"] == list(stall.stack)
    assert watch.ongoing is None


def test_short_blocks_are_lag_not_stalls(watch, loop):
    t0 = time.monotonic()
    watch.set_phase("short")
    left = [10]
    finished = threading.Event()

    def block() -> None:
        # ten 20 ms callbacks, each queueing the next before it blocks: a beat falling due
        # meanwhile is queued behind the next one, so it runs >= 20 ms late
        left[0] -= 1
        if left[0]:
            loop.call_soon(block)
        sleep_ms(20)
        if not left[0]:
            finished.set()

    loop.call_soon_threadsafe(block)
    assert finished.wait(DEADLINE_S)
    beats_pass(watch)
    assert watch.stalls_since(t0) == []
    assert watch.lag("short")["max_ms"] >= 15
    assert watch.own_stalls == 0


def test_own_work_is_not_a_finding(watch, loop):
    t0 = time.monotonic()

    def census() -> None:
        with watch.own_work():
            sleep_ms(200)

    on_loop(loop, census)
    beats_pass(watch)
    assert watch.stalls_since(t0) == []
    assert watch.own_stalls == 1
    assert watch.own_stall_ms >= 190
    assert watch.lag_now()["max_ms"] < 100  # own time is taken off the lag too


def test_bus_block_next_to_own_work_is_still_found(watch, loop):
    t0 = time.monotonic()

    def both() -> None:
        with watch.own_work():
            sleep_ms(150)
        sleep_ms(200)

    on_loop(loop, both)
    beats_pass(watch)
    (stall,) = watch.stalls_since(t0)
    assert 190 <= stall.duration_ms < 300  # the bus's share of the gap only
    assert stall.component == "tests" and "in sleep_ms: time.sleep(ms / 1000)" in stall.blocking


def test_idle_lag_is_small(watch):
    watch.set_phase("idle-check")
    wait_until(lambda: watch.lag("idle-check").get("count", 0) >= 10)
    lag = watch.lag_now()
    assert set(lag) == {"p50_ms", "p99_ms", "max_ms", "count"}
    assert lag["p50_ms"] < 5
    assert watch.lag("never-set") == {}


def test_ongoing_names_the_call_while_the_loop_is_held(watch, loop):
    t0 = time.monotonic()
    release = threading.Event()
    held = threading.Event()

    def hold() -> None:
        held.set()
        release.wait(DEADLINE_S)

    loop.call_soon_threadsafe(hold)
    try:
        assert held.wait(DEADLINE_S)
        wait_until(lambda: (watch.ongoing or _NO).samples >= 2)
        live = watch.ongoing
        assert live is not None and live.duration_ms > 100
        line = hold.__code__.co_firstlineno + 2
        assert live.blocking == f"{THIS_FILE}:{line} in hold: release.wait(DEADLINE_S)"
        assert live.stack[-1].startswith("threading.py:")  # the full stack, machinery included
    finally:
        release.set()
    beats_pass(watch)
    (stall,) = watch.stalls_since(t0)
    assert stall.blocking == live.blocking and stall.samples >= live.samples
    assert stall.duration_ms >= live.duration_ms
    assert watch.ongoing is None


def test_a_block_holding_the_gil_is_caught_and_named_by_its_caller(watch, loop):
    # the watchdog cannot run during the call; it gets the GIL back once the call returns,
    # while the loop thread is still in the caller, and the heartbeat is overdue by then
    t0 = time.monotonic()
    on_loop(loop, lambda: hold_gil(250_000, then_s=0.02))
    beats_pass(watch)
    (stall,) = watch.stalls_since(t0)
    assert 260 <= stall.duration_ms < 420
    assert stall.blocking.startswith(f"{THIS_FILE}:") and " in hold_gil: " in stall.blocking
    assert stall.component == "tests"


def test_an_idle_loop_is_recognised_from_its_real_stack(watch, loop):
    ident: list[int] = []
    on_loop(loop, lambda: ident.append(threading.get_ident()))

    def idle_now() -> bool:
        return loop_is_idle(_walk(sys._current_frames().get(ident[0])))

    wait_until(idle_now)
    frames: list[Frame] = []
    on_loop(loop, lambda: frames.extend(_walk(sys._getframe())))
    assert not loop_is_idle(frames)  # inside a callback


def test_reset_forgets_lag_and_stalls(watch, loop):
    on_loop(loop, sleep_quarter)
    beats_pass(watch)
    assert watch.stalls_since(0.0) and watch.lag_now()
    watch.reset()
    assert watch.stalls_since(0.0) == [] and watch.phases() == []
    beats_pass(watch, 2)
    assert watch.lag_now()["count"] >= 1


def test_stop_ends_the_watchdog_is_idempotent_and_ends_the_beats(watch, loop):
    assert any(t.name == WATCHDOG_THREAD_NAME for t in threading.enumerate())
    thread = watch._thread
    watch.stop()
    assert thread is not None
    if watch._shared:  # the shared thread stays, with nothing of this watch armed
        assert thread.is_alive() and watch not in shared_watchdog()._armed
    else:
        assert not thread.is_alive()  # joined
    watch.stop()
    beats = watch.beats
    # every timer due within the next five beats runs before this one fires
    passed = threading.Event()
    loop.call_soon_threadsafe(loop.call_later, 0.1, passed.set)
    assert passed.wait(DEADLINE_S)
    assert watch.beats == beats
    assert watch.ongoing is None


def test_stop_after_the_loop_closed_does_not_raise():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    watch = LoopWatch(loop)
    watch.start()
    beats_pass(watch, 2)  # a beat is scheduled on the loop right now
    loop.call_soon_threadsafe(loop.stop)
    thread.join(DEADLINE_S)
    loop.close()
    watchdog = watch._thread
    watch.stop()
    watch.stop()
    assert watchdog is not None and not watchdog.is_alive()


def test_restart_runs_one_heartbeat_chain(watch, loop):
    watch.stop()
    watch.start()
    beats_pass(watch, 2)
    t0 = watch.beats
    passed = threading.Event()
    loop.call_soon_threadsafe(loop.call_later, 0.2, passed.set)
    assert passed.wait(DEADLINE_S)
    assert watch.beats - t0 <= 12  # ~10 at 20 ms; two heartbeat chains would make ~20


def test_a_small_threshold_shortens_the_beat_instead_of_seeing_stalls_everywhere(loop):
    with pytest.raises(ValueError):
        LoopWatch(loop, stall_ms=1)
    w = LoopWatch(loop, beat_ms=100, stall_ms=60)  # every idle gap would be a stall
    w.start()
    try:
        beats_pass(w, 10)  # ten beats within 300 ms or so: the beat was shortened to 30 ms
        assert w.stalls_since(0.0) == [] and w.own_stalls == 0
    finally:
        w.stop()


def test_blocking_frame_looks_through_machinery_stdlib_and_busmon():
    frames = [
        Frame("/x/asyncio/events.py", 80, "_run", "asyncio.events"),
        Frame("/site-packages/nats/aio/client.py", 400, "_connect", "nats.aio.client"),
        Frame("/usr/lib/python3.11/ssl.py", 1342, "do_handshake", "ssl"),
        Frame("/work/main/probes/tracking.py", 12, "hook", "busmon.probes.observe.tracking"),
        Frame("/usr/lib/python3.11/threading.py", 320, "wait", "threading"),
    ]
    assert blocking_frame(frames) == frames[1]
    assert frames[1].top == "nats"
    assert blocking_frame(frames[2:]) == frames[2]  # only the standard library: its frame
    assert blocking_frame([frames[0], frames[3], frames[4]]) is None


# -- the shared watchdog ----------------------------------------------------------------------

def block_a() -> None:
    time.sleep(0.25)


def block_b() -> None:
    time.sleep(0.35)


def test_two_watches_at_once_on_two_loops_each_see_their_own_stall_only():
    """One shared thread watches both loops; each arming keeps its own state."""
    (loop_a, thread_a), (loop_b, thread_b) = start_loop("loop-a"), start_loop("loop-b")
    watches: dict[str, LoopWatch] = {}
    ready = threading.Barrier(2)

    def control(name: str, loop: asyncio.AbstractEventLoop) -> None:
        """Started and stopped from two controlling threads at once, as two tests would."""
        w = watches[name] = LoopWatch(loop, shared=True)
        w.start()
        beats_pass(w, 2)
        ready.wait(DEADLINE_S)  # both armed: the blocks overlap
        on_loop(loop, block_a if name == "a" else block_b)
        beats_pass(w, 2)
        w.stop()

    try:
        controllers = [threading.Thread(target=control, args=("a", loop_a)),
                       threading.Thread(target=control, args=("b", loop_b))]
        for c in controllers:
            c.start()
        for c in controllers:
            c.join(DEADLINE_S)
        assert set(watches) == {"a", "b"}
        assert watches["a"]._thread is watches["b"]._thread  # one thread for both
        for name, fn in (("a", "block_a"), ("b", "block_b")):
            stalls = watches[name].stalls_since(0.0)
            assert len(stalls) == 1, (name, stalls)
            assert f"in {fn}: time.sleep" in stalls[0].blocking, (name, stalls[0])
    finally:
        end_loop(loop_a, thread_a)
        end_loop(loop_b, thread_b)


def test_the_shared_thread_is_started_once_for_many_watches(loop):
    dog = shared_watchdog()
    starts = None
    for _ in range(20):
        w = LoopWatch(loop, shared=True)
        w.start()
        beats_pass(w, 1)
        starts = dog.starts if starts is None else starts
        w.stop()
    assert dog.starts == starts == 1
    # one shared thread, alive and parked (told by identity: a dedicated LoopWatch of an earlier
    # test in this process may share its name while it stops)
    assert dog.thread is not None and dog.thread.is_alive() and dog.armed == 0


class _OnWatchdog:
    """Armed like a watch: its one look records the watchdog thread's CPU time, then disarms."""

    def __init__(self) -> None:
        self.cpu: list[float] = []
        self.looked = threading.Event()

    def _look(self) -> None:
        self.cpu.append(time.thread_time())
        self.looked.set()


def test_a_parked_watchdog_uses_no_cpu(loop):
    dog = shared_watchdog()
    w = LoopWatch(loop, shared=True)
    w.start()  # the thread runs
    w.stop()
    probe = _OnWatchdog()
    dog.arm(probe, 0.0)  # type: ignore[arg-type]
    assert probe.looked.wait(DEADLINE_S)
    wait_until(lambda: dog.parked)
    wakeups = dog.wakeups
    # the parked interval is what is measured: nothing to wait for but its end
    assert not threading.Event().wait(0.5)
    assert dog.parked and dog.wakeups == wakeups  # not one wake-up: no polling
    probe.looked.clear()
    dog.arm(probe, 0.0)  # type: ignore[arg-type]
    assert probe.looked.wait(DEADLINE_S)
    # the thread's own CPU time across half a second parked: only the one wake-up to look again
    assert probe.cpu[1] - probe.cpu[0] < 0.002, probe.cpu
