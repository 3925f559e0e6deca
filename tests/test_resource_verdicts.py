"""Resources beyond tasks and threads, judged the same way: a socket kept open, a child process
left running, a handler that blocks the loop, a bus that keeps every envelope; and the
built-in backends, on real brokers, judged clean with no resource finding."""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Awaitable, Callable

import pytest

from busmon.probes.model import RunResult
from busmon.probes.harness.scenario import parse_scenario
from busmon.probes.harness.session import Session
from tests import leaky_buses
from tests.conftest import backend_options, backend_url


def play(backend: str, *, settle_s: float = 2.0, messages: int = 200, bus: str = "", runs: int = 1,
         extra: str = "", keys: int = 10, rate: float = 0, after: Callable[[], Awaitable[None]] | None = None) -> list[RunResult]:
    """Play the runs; ``after`` runs on the arena loop before it stops (to release what a
    misbehaving bus left, on the loop it belongs to)."""
    runs_toml = "".join(f'[[runs]]\nname = "r{i}"\nmessages = {m}\n'
                        for i, m in enumerate(messages if isinstance(messages, list) else [messages] * runs))
    text = (f'name = "t"\nbackend = "{backend}"\n{bus}\n[probes]\nsettle_timeout_s = {settle_s}\n'
            f'interval_ms = 50\n{extra}\n[defaults]\nkeys = {keys}\nrate_per_s = {rate}\n{runs_toml}')
    sc = parse_scenario(text, "test.toml")
    with Session(sc, lambda event: None) as session:
        try:
            return list(session.play().runs)
        finally:
            if after is not None:
                session.arena.run(after(), timeout=10)


def found(run: RunResult, kind: str, state: str | None = None) -> list[Any]:
    return [x for x in run.leftovers if x.kind == kind and (state is None or x.state == state)]


@pytest.fixture
def listener():
    """A loopback TCP listener (the kernel completes connections to it without accept)."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=16)
    yield sock
    sock.close()


async def _close_registry() -> None:
    for writer in [x for x in leaky_buses.REGISTRY if isinstance(x, asyncio.StreamWriter)]:
        writer.close()
        await writer.wait_closed()
        leaky_buses.REGISTRY.remove(writer)


async def _end_children() -> None:
    for proc in list(leaky_buses.STUCK_PROCESSES):
        proc.kill()
        await proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
        leaky_buses.STUCK_PROCESSES.remove(proc)


# -- sockets ---------------------------------------------------------------------------------

def test_socket_kept_open_is_a_leaked_socket_with_its_addresses_and_who_opened_it(listener):
    port = listener.getsockname()[1]
    (run,) = play("tests.leaky_buses:SocketKeeper", settle_s=0.3, bus=f'[bus]\npeer = "127.0.0.1:{port}"',
                  after=_close_registry)
    assert run.verdict == "leaked"
    (sock,) = found(run, "socket")
    assert sock.state == "leaked"
    assert sock.name == f"tcp → 127.0.0.1:{port}"
    assert "ESTABLISHED" in sock.detail and "fd " in sock.detail and "local 127.0.0.1:" in sock.detail
    assert sock.component == "tests"
    assert sock.created_at and "leaky_buses.py" in sock.created_at and "start" in sock.created_at
    assert run.phase("load").sockets == 1 and run.phase("settle").sockets == 1
    assert run.phase("baseline").sockets == 0


def test_an_ignore_rule_by_peer_address_labels_the_socket(listener):
    port = listener.getsockname()[1]
    (run,) = play("tests.leaky_buses:SocketKeeper", settle_s=0.1, bus=f'[bus]\npeer = "127.0.0.1:{port}"',
                  extra=f'ignore_sockets = ["127.0.0.1:{port}"]', after=_close_registry)
    (sock,) = found(run, "socket")
    assert sock.state == "ignored" and "ignore rule" in sock.detail
    assert run.verdict == "clean"


# -- child processes -------------------------------------------------------------------------

def test_child_process_left_running_is_named_with_pid_command_line_and_creator():
    (run,) = play("tests.leaky_buses:ChildLeaker", settle_s=0.3, after=_end_children)
    assert run.verdict == "leaked"
    (proc,) = found(run, "process", "leaked")
    assert proc.name.startswith("pid ") and "sys.stdin.buffer.read()" in proc.name
    assert proc.component == "process:tests"
    assert proc.created_at and "leaky_buses.py" in proc.created_at
    assert "still " in proc.detail
    pid = proc.name.split(":")[0].removeprefix("pid ")
    # asyncio's waitpid thread is no longer a mystery: it names the child it waits for
    (waiter,) = [x for x in found(run, "thread") if x.name.startswith("asyncio-waitpid-")]
    assert f"child process {pid}" in waiter.detail and "sys.stdin.buffer.read()" in waiter.detail
    # the pipe to its stdin is the child's too
    pipes = [x for x in found(run, "fd", "leaked") if x.name.startswith("pipe")]
    assert pipes and f"shared with child pid {pid}" in pipes[0].detail and pipes[0].component == "process:tests"
    assert run.phase("settle").processes == 1


DEEP = "/tmp/" + "a-folder-with-a-rather-long-name/" * 6 + "busmon/.venv/bin"


@pytest.mark.parametrize("folder", ["/v/bin", DEEP, "/tmp/with spaces/.venv/bin"])
def test_a_childs_command_line_keeps_its_arguments_wherever_its_executable_lives(folder, tmp_path):
    """The executable is shortened, never the arguments: the same line from any clone's venv."""
    from busmon.probes.observe.children import Child, short_command

    argv = (f"{folder}/python", "-c", "import sys; sys.stdin.buffer.read()")
    assert short_command(argv, 50) == "python -c import sys; sys.stdin.buffer.read()"
    child = Child(1, 0.0, " ".join(argv), "sleeping", argv)
    assert child.program == "python" and child.short(60) == short_command(argv, 60)
    # a long script path keeps its file name and the arguments after it; code is left whole
    path = tmp_path / "a folder with spaces" / ("deep-" * 10) / "serve.py"
    path.parent.mkdir(parents=True)
    path.write_text("")
    assert short_command((f"{folder}/python", str(path), "--port", "4222"), 40) == "python …/serve.py --port 4222"
    assert short_command((f"{folder}/python", "-c", "print(1/2)"), 20) == "python -c print(1/2)"
    # only what is still too long is cut, at its end
    assert short_command((f"{folder}/python", "-c", "x" * 80), 20) == "python -c " + "x" * 9 + "…"


def test_ignore_rule_by_command_line_labels_the_child():
    (run,) = play("tests.leaky_buses:ChildLeaker", settle_s=0.1, extra='ignore_processes = ["*sys.stdin*"]',
                  after=_end_children)
    (proc,) = found(run, "process")
    assert proc.state == "ignored"


# -- a blocked event loop --------------------------------------------------------------------

def test_handler_that_blocks_the_loop_is_a_stall_with_the_blocking_call():
    # paced, so the loop runs between blocks: three stalls, not one long one
    (run,) = play("tests.leaky_buses:LoopBlocker", messages=900, rate=1000, bus="[bus]\nblock_ms = 250\nevery = 300")
    assert run.verdict == "clean"  # a stall is a warning unless fail_on_stall_ms says otherwise
    assert len(run.stalls) == 3
    for stall in run.stalls:
        assert stall["phase"] == "load"
        assert 240 <= stall["duration_ms"] < 1000
        assert "leaky_buses.py" in stall["blocking"] and "time.sleep" in stall["blocking"]
        assert stall["component"] == "tests"
        assert any("leaky_buses.py" in line and "blocking" in line for line in stall["stack"])
    assert run.phase("load").loop_lag_ms["max_ms"] >= 200


def test_fail_on_stall_ms_fails_the_run_naming_the_call():
    (run,) = play("tests.leaky_buses:LoopBlocker", messages=600, bus="[bus]\nblock_ms = 250\nevery = 500",
                  extra="fail_on_stall_ms = 200")
    assert run.verdict == "failed"
    assert "blocked for" in run.error and "time.sleep" in run.error and "fail_on_stall_ms = 200" in run.error
    assert run.failure["kind"] == "stall" and run.failure["phase"] == "load"


# -- retained memory -------------------------------------------------------------------------

def test_bus_that_keeps_every_envelope_retains_memory_that_grows_with_the_load():
    (run,) = play("tests.leaky_buses:Hoarder", messages=2000)
    assert run.verdict == "leaked"
    (finding,) = run.retained()
    assert finding["type"].endswith("Envelope") and finding["count"] == 2000
    assert 0.99 <= finding["per_envelope"] <= 1.01
    assert "Hoarder" in finding["held_by"] and "sent" in finding["held_by"]
    assert run.leftovers == ()  # nothing else: tasks, threads, sockets all clean


def test_memory_tracing_says_where_the_retained_objects_were_allocated():
    (run,) = play("tests.leaky_buses:Hoarder", messages=500, extra="trace_memory = true")
    (finding,) = run.retained()
    assert finding["allocated_at"] and "runner.py" in finding["allocated_at"]  # busmon made the envelopes
    assert run.memory["traced"] is True




# -- well-behaved buses: no resource finding at any step of the ladder ------------------------

@pytest.mark.parametrize("backend", ["memory", "kafka", "nats", "nats+js"])
def test_built_in_backends_leave_no_socket_fd_process_or_retained_memory(request, backend):
    url = backend_url(request, backend)
    options = "".join(f'{k} = "{v}"\n' for k, v in backend_options(backend).items())
    bus = f'url = "{url}"\n' + (f"[bus]\n{options}" if options else "")
    runs = play("memory" if backend == "memory" else {"kafka": "kafka", "nats": "nats"}.get(backend, "nats-js"),
                settle_s=5.0, messages=[500, 2000], keys=100, bus=bus)
    for run in runs:
        assert run.verdict == "clean", (run.name, run.leftovers, run.memory.get("retained"))
        assert not [x for x in run.leftovers if x.kind in ("socket", "fd", "process") and x.state != "exited"]
        assert run.retained() == []
        assert run.stalls == (), run.stalls
        assert run.phase("settle").sockets == 0
        if backend != "memory":
            assert run.phase("load").sockets >= 1  # it did talk to the broker
            exited = [x for x in run.leftovers if x.kind == "socket"]
            assert all(x.component in ("aiokafka", "nats", "kafka") for x in exited), exited


def test_an_ignored_child_takes_its_pipe_and_its_waitpid_thread_with_it():
    (run,) = play("tests.leaky_buses:ChildLeaker", settle_s=0.1, extra='ignore_processes = ["*sys.stdin*"]',
                  after=_end_children)
    assert run.verdict == "clean", [x for x in run.leftovers if x.state == "leaked"]
    (pipe,) = [x for x in found(run, "fd") if x.name.startswith("pipe")]
    assert pipe.state == "ignored" and "ignored child pid" in pipe.detail
    (waiter,) = [x for x in found(run, "thread") if x.name.startswith("asyncio-waitpid-")]
    assert waiter.state == "ignored" and "ignored child pid" in waiter.detail


def test_a_bare_port_ignores_a_socket_by_either_end(listener):
    port = listener.getsockname()[1]
    (run,) = play("tests.leaky_buses:SocketKeeper", settle_s=0.1, bus=f'[bus]\npeer = "127.0.0.1:{port}"',
                  extra=f'ignore_sockets = ["{port}"]', after=_close_registry)
    assert [x.state for x in found(run, "socket")] == ["ignored"] and run.verdict == "clean"


def test_fail_on_stall_ms_below_stall_ms_still_fails_the_run():
    (run,) = play("tests.leaky_buses:LoopBlocker", messages=600, bus="[bus]\nblock_ms = 80\nevery = 500",
                  extra="fail_on_stall_ms = 50")
    assert run.verdict == "failed" and run.failure["kind"] == "stall"


def test_stalls_are_not_judged_while_memory_is_traced():
    (run,) = play("tests.leaky_buses:LoopBlocker", messages=600, bus="[bus]\nblock_ms = 250\nevery = 500",
                  extra="trace_memory = true\nfail_on_stall_ms = 200")
    assert run.verdict == "clean" and run.stalls == ()
    assert any("trace_memory" in note for note in run.notes)


def test_an_ignored_type_is_shown_set_aside_not_dropped():
    (run,) = play("tests.leaky_buses:Hoarder", messages=500, extra='ignore_types = ["Envelope"]')
    assert run.retained() == [] and run.verdict == "clean"
    (aside,) = run.memory["ignored"]
    assert aside["type"].endswith("Envelope") and aside["reason"] == "ignore rule 'Envelope'"
