"""The verdict answers one question exactly: what did this run leave alive or pending that its
baseline did not have, whenever it appeared, with no effect of busmon's own measuring on it.
Each case runs with creation tracing off and on: the verdict must not change."""

from __future__ import annotations

import pytest

from busmon.probes.model import RunResult
from busmon.probes.harness.scenario import parse_scenario
from busmon.probes.harness.session import Session

TRACE = pytest.mark.parametrize("trace", [False, True], ids=["trace-off", "trace-on"])


def play(bus: str, *, trace: bool, settle_s: float = 1.0, options: str = "", runs: int = 1) -> list[RunResult]:
    runs_toml = "".join(f'[[runs]]\nname = "r{i}"\nmessages = 100\n' for i in range(runs))
    text = (f'backend = "tests.leaky_buses:{bus}"\n{options}\n[probes]\nsettle_timeout_s = {settle_s}\n'
            f'trace_creation = {"true" if trace else "false"}\n[defaults]\nkeys = 10\n{runs_toml}')
    with Session(parse_scenario(text, "v.toml"), lambda e: None) as session:
        return list(session.play().runs)


def by_state(run: RunResult) -> dict[tuple[str, str], str]:
    return {(x.kind, x.name): x.state for x in run.leftovers}


@TRACE
def test_a_task_started_by_a_timer_after_close_is_seen_and_blamed_on_its_own_run(trace):
    first, second = play("LateTask", trace=trace, runs=2)
    assert first.verdict == "leaked"
    states = by_state(first)
    assert states[("task", "bus.late.reconnect")] == "leaked"
    assert states[("timer", "LateTask._reconnect")] == "exited"  # it fired, ~200 ms after close
    timer = next(x for x in first.leftovers if x.kind == "timer")
    assert timer.component == "tests" and 150 <= timer.exited_after_ms < 1000
    # the next run is not blamed for it: its own leftover is its own
    assert [x.name for x in second.leftovers if x.kind == "task"] == ["bus.late.reconnect"]
    assert second.drift["tasks"] == 2


@TRACE
def test_a_thread_started_after_close_is_seen(trace):
    (run,) = play("LateThread", trace=trace)
    assert run.verdict == "leaked"
    assert by_state(run)[("thread", "late-poller")] == "leaked"


@TRACE
def test_a_timer_left_scheduled_is_a_leftover_of_its_own_kind(trace):
    (run,) = play("PendingTimer", trace=trace, settle_s=0.3)
    assert run.verdict == "leaked"
    (timer,) = [x for x in run.leftovers if x.kind == "timer"]
    assert (timer.name, timer.state, timer.component) == ("PendingTimer._retry", "leaked", "tests")
    assert "due 60" in timer.detail or "due 59" in timer.detail


@TRACE
def test_an_executor_job_stuck_at_the_deadline_is_leaked_with_its_stack(trace):
    (run,) = play("StuckExecutorJob", trace=trace, settle_s=0.3)
    assert run.verdict == "leaked"
    (thread,) = [x for x in run.leftovers if x.kind == "thread"]
    assert thread.name.startswith("asyncio_") and thread.state == "leaked"
    assert "still running a job" in thread.detail
    assert any("threading.py" in line and "wait" in line for line in thread.stack)


@TRACE
def test_an_idle_executor_thread_is_ignored(trace):
    (run,) = play("ExecutorUser", trace=trace, settle_s=0.3)
    assert run.verdict == "clean"
    threads = [x for x in run.leftovers if x.kind == "thread"]
    assert threads and all(x.state == "ignored" and "idle" in x.detail for x in threads)


@TRACE
def test_an_abandoned_pending_task_is_destroyed_not_kept_alive_by_the_probes(trace):
    (run,) = play("AbandonedTask", trace=trace)
    (left,) = run.leftovers
    assert (left.name, left.state) == ("bus.abandoned.waiter", "destroyed")
    assert "destroyed while pending" in left.detail and "_wait_for_nothing" in left.detail
    assert run.verdict == "leaked"  # a real bug in the bus
    if trace:
        assert left.created_at and "leaky_buses.py" in left.created_at


@TRACE
def test_a_task_that_exits_and_is_then_collected_is_exited(trace):
    (run,) = play("ExitsThenCollected", trace=trace)
    (left,) = run.leftovers
    assert (left.name, left.state) == ("bus.brief.flush", "exited")
    assert "destroyed" not in left.detail
    assert run.verdict == "clean"


@TRACE
def test_a_foreign_thread_that_ended_is_not_leaked(trace):
    (run,) = play("ForeignThread", trace=trace, settle_s=0.5)
    assert run.verdict == "clean", run.leftovers
    assert not [x for x in run.leftovers if x.state == "leaked"]


def test_a_factory_option_named_url_reaches_the_factory_untouched():
    (run,) = play("make_bus_with_url", trace=False, options='[bus]\nurl = "tcp://elsewhere:1"\nworkers = 4')
    assert run.verdict == "clean", run.error


def test_creation_sites_skip_create_task_helpers():
    (run,) = play("WrappedCreateLeaker", trace=True, settle_s=0.2)
    (left,) = [x for x in run.leftovers if x.state == "leaked"]
    assert left.created_at.startswith("tests/leaky_buses.py:") and left.created_at.endswith("in start")


@pytest.mark.nats
def test_creation_sites_and_stacks_keep_their_package(nats_broker):
    (run,) = play("NatsNeverClosed", trace=True, settle_s=0.3, options=f'[bus]\nservers = "{nats_broker.url}"')
    read_loop = next(x for x in run.leftovers if x.detail.endswith("_read_loop"))
    assert read_loop.component == "nats"
    assert read_loop.created_at.startswith("nats/aio/client.py:"), read_loop.created_at
    assert any(line.startswith("nats/aio/client.py:") for line in read_loop.stack)


def test_busmon_s_own_threads_are_named_as_busmon_s():
    import threading

    from rich.console import Console
    from rich.live import Live

    from busmon.probes.observe.components import thread_component

    live = Live(console=Console(file=open("/dev/null", "w"), force_terminal=True))
    live.start()
    try:
        names = {thread_component(t) for t in threading.enumerate()}
    finally:
        live.stop()
    assert "busmon.ui (rich)" in names and "thread:Thread" not in names
