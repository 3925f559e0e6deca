"""Leak verdicts proven with buses written to misbehave, and with a real client used wrongly."""

from __future__ import annotations


from busmon.probes.model import RunResult
from busmon.probes.harness.scenario import parse_scenario
from busmon.probes.harness.session import Session
from tests import leaky_buses


def play(backend: str, *, settle_s: float = 2.0, messages: int = 200, bus: str = "",
         runs: int = 1, extra: str = "") -> list[RunResult]:
    runs_toml = "".join(f'[[runs]]\nname = "r{i}"\nmessages = {messages}\n' for i in range(runs))
    text = (f'name = "t"\nbackend = "{backend}"\n{bus}\n[probes]\nsettle_timeout_s = {settle_s}\n'
            f'interval_ms = 50\n{extra}\n[defaults]\nkeys = 10\n{runs_toml}')
    sc = parse_scenario(text, "test.toml")
    with Session(sc, lambda event: None) as session:
        return list(session.play().runs)


def states(run: RunResult) -> dict[str, str]:
    return {x.name: x.state for x in run.leftovers}


def test_clean_bus_is_clean_and_naive_equals_settled():
    (run,) = play("memory")
    assert run.verdict == "clean"
    assert run.leftovers == ()
    assert run.delivery["lost"] == 0 and run.delivery["received"] == 200
    assert run.phase("create").by_component["bus.pool"] == 256


def test_task_left_running_is_leaked_with_name_component_and_stack():
    (run,) = play("tests.leaky_buses:TaskLeaker", settle_s=0.2)
    assert run.verdict == "leaked"
    (left,) = [x for x in run.leftovers if x.name == "bus.leaky.heartbeat"]
    assert (left.kind, left.state, left.component, left.exited_after_ms) == ("task", "leaked", "bus.leaky.heartbeat", None)
    assert any("_forever" in line for line in left.stack)
    # the pool's 256 workers were closed properly and are not leftovers at all
    assert all(not x.name.startswith("bus.pool") for x in run.leftovers)


def test_thread_left_running_is_leaked():
    (run,) = play("tests.leaky_buses:ThreadLeaker", settle_s=0.2)
    assert run.verdict == "leaked"
    (left,) = [x for x in run.leftovers if x.kind == "thread"]
    assert (left.name, left.state) == ("leaky-poller", "leaked")
    assert any("wait" in line for line in left.stack)


def test_task_that_exits_after_close_is_exited_under_a_long_deadline():
    (run,) = play("tests.leaky_buses:SlowExit", settle_s=5.0, bus="[bus]\nlinger_ms = 300")
    assert run.verdict == "clean"
    (left,) = run.leftovers
    assert (left.name, left.state) == ("bus.slow.flusher", "exited")
    assert 250 <= left.exited_after_ms < 5000
    # the naive count right after close saw it; the settled count does not
    base, close, settled = run.phase("baseline"), run.phase("close"), run.phase("settle")
    assert close.tasks == base.tasks + 1 and settled.tasks == base.tasks


def test_the_same_task_is_leaked_under_a_short_deadline():
    (run,) = play("tests.leaky_buses:SlowExit", settle_s=0.1, bus="[bus]\nlinger_ms = 2000")
    assert run.verdict == "leaked"
    assert states(run) == {"bus.slow.flusher": "leaked"}


def test_cancel_without_await_shows_in_the_naive_count_then_exits():
    (run,) = play("tests.leaky_buses:CancelWithoutAwait", settle_s=5.0,
                  bus="[bus]\nworkers_ = 3\ncleanup_ms = 80")
    assert run.verdict == "clean"
    assert states(run) == {f"bus.sloppy.worker-{i}": "exited" for i in range(3)}
    assert all(50 <= x.exited_after_ms < 5000 for x in run.leftovers)
    assert run.phase("close").new_tasks == 3 and run.phase("settle").new_tasks == 0


def test_replacement_task_is_caught_by_identity_though_the_count_is_unchanged():
    from busmon.probes.harness.scenario import parse_scenario

    sc = parse_scenario('name = "t"\nbackend = "tests.leaky_buses:Replacer"\n[probes]\n'
                        'settle_timeout_s = 0.2\n[[runs]]\nname = "r"\nmessages = 50\n', "t.toml")
    with Session(sc, lambda e: None) as session:
        held = []

        async def seed():
            held.append(leaky_buses.start_shared_heartbeat())  # held, so it lives until replaced

        session.arena.run(seed())
        (run,) = session.play().runs
    assert run.phase("settle").tasks == run.phase("baseline").tasks, "a count-only check sees no change"
    assert run.verdict == "leaked"
    assert states(run) == {"shared.heartbeat": "leaked"}


def test_runtime_executor_thread_is_ignored_and_labelled():
    (run,) = play("tests.leaky_buses:ExecutorUser", settle_s=0.2)
    assert run.verdict == "clean"
    threads = [x for x in run.leftovers if x.kind == "thread"]
    assert threads and all(x.state == "ignored" for x in threads)
    assert all(x.name.startswith("asyncio_") and "default executor" in x.detail for x in threads)


def test_ignore_rule_from_the_scenario_labels_instead_of_failing():
    (run,) = play("tests.leaky_buses:TaskLeaker", settle_s=0.1, extra='ignore_tasks = ["_forever"]')
    assert run.verdict == "clean"
    assert states(run) == {"bus.leaky.heartbeat": "ignored"}
    assert "ignore rule '_forever'" in run.leftovers[0].detail


def test_creation_tracing_records_where_a_leaked_task_was_created():
    (run,) = play("tests.leaky_buses:TaskLeaker", settle_s=0.1, extra="trace_creation = true")
    (left,) = run.leftovers
    assert left.created_at and "leaky_buses.py" in left.created_at and "start" in left.created_at


def test_leftovers_accumulate_across_runs_as_drift():
    runs = play("tests.leaky_buses:TaskLeaker", settle_s=0.1, runs=3)
    assert [r.verdict for r in runs] == ["leaked"] * 3
    assert [r.drift["tasks"] for r in runs] == [1, 2, 3]


def test_nats_connection_never_closed_leaks_its_read_loop(nats_broker):
    (run,) = play("tests.leaky_buses:NatsNeverClosed", settle_s=0.3,
                  bus=f'[bus]\nservers = "{nats_broker.url}"')
    assert run.verdict == "leaked"
    leaked = {x.detail: x for x in run.leftovers if x.state == "leaked"}
    read_loops = [x for d, x in leaked.items() if d.endswith("_read_loop")]
    assert read_loops and read_loops[0].component == "nats"
