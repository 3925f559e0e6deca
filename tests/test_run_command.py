"""``busmon run``: real programs started with the agent inside, judged at shutdown.

Each test runs ``python -m busmon run -- python prog.py`` as a person would: the program is a
real process, its verdict comes over the agent's channel, the exit code and the report are
what busmon says. The programs are small and end by themselves.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.run_programs import SERVICE, busmon_run, leaked, phases, report, start_run, write

PY = sys.executable


def test_a_clean_service_exits_0_with_its_input_and_output_untouched(tmp_path: Path) -> None:
    prog = write(tmp_path, "service.py", SERVICE)
    out = busmon_run("--report", str(tmp_path / "r.json"), "--", PY, str(prog), stdin="hello\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "consumed hello\n"  # the program's stdout is its own: busmon writes to stderr
    assert "is clean" in out.stderr
    data = report(tmp_path / "r.json")
    assert data["verdict"] == "clean" and data["runs"][0]["backend"] == "program"
    assert phases(data) == ["baseline", "ready", "consumer stopped", "shutdown", "settle"]
    ready = data["runs"][0]["phases"][1]
    assert ready["new_tasks"] == 1 and ready["by_component"].get("__main__") == 2  # main + consumer


def test_a_leaked_consumer_exits_1_naming_it_and_where_it_was_created(tmp_path: Path) -> None:
    prog = write(tmp_path, "service.py", SERVICE)
    out = busmon_run("--settle-timeout", "0.3", "--report", str(tmp_path / "r.json"), "--report",
                     str(tmp_path / "r.md"), "--", PY, str(prog), "--leak", stdin="x\n")
    assert out.returncode == 1, out.stderr
    assert "leaked 1 task" in out.stderr
    # nothing references the consumer once main() returned: the GC of the verdict destroys it
    # pending, which is a leak too (the program never stopped it)
    assert "task consume (__main__ · consumer)  destroyed" in out.stderr
    assert "created at " in out.stderr and "service.py:13 in main" in out.stderr
    [task] = leaked(report(tmp_path / "r.json"))
    assert task["name"] == "consumer" and task["created_at"].endswith("service.py:13 in main")
    md = (tmp_path / "r.md").read_text()
    assert "shutdown (naive: counted right when the main coroutine returned)" in md
    assert "### Leftovers at shutdown" in md and "| consumer stopped |" in md


def test_the_program_failing_gives_its_own_exit_code_and_still_a_verdict(tmp_path: Path) -> None:
    prog = write(tmp_path, "service.py", SERVICE)
    out = busmon_run("--settle-timeout", "0.3", "--", PY, str(prog), "--leak", "--exit", "7", stdin="x\n")
    assert out.returncode == 7, out.stderr
    assert "leaked 1 task" in out.stderr and "the program failed (exit code 7)" in out.stderr


def test_a_thread_left_running_is_named_with_where_it_was_started(tmp_path: Path) -> None:
    prog = write(tmp_path, "threads.py", """
        import asyncio, threading
        stop = threading.Event()

        async def main():
            threading.Thread(target=stop.wait, name="poller", daemon=True).start()

        asyncio.run(main())
        stop.set()
    """)
    out = busmon_run("--settle-timeout", "0.3", "--", PY, str(prog))
    assert out.returncode == 1, out.stderr
    assert "thread poller" in out.stderr and "started at " in out.stderr and "threads.py:6 in main" in out.stderr


def test_verdict_at_a_mark_judges_then_and_the_program_goes_on(tmp_path: Path) -> None:
    prog = write(tmp_path, "service.py", SERVICE)
    # the consumer is stopped before the mark: clean there
    out = busmon_run("--verdict-at", "consumer stopped", "--report", str(tmp_path / "r.json"), "--",
                     PY, str(prog), stdin="x\n")
    assert out.returncode == 0, out.stderr
    data = report(tmp_path / "r.json")
    assert "shutdown" not in phases(data)
    assert any("judged at the mark 'consumer stopped'" in n for n in data["runs"][0]["notes"])
    # left running at the mark: leaked, although asyncio.run() cancels it at the end
    out = busmon_run("--verdict-at", "consumer stopped", "--settle-timeout", "0.3", "--",
                     PY, str(prog), "--leak", stdin="x\n")
    assert out.returncode == 1 and "leaked 1 task" in out.stderr


def test_baseline_at_a_mark_and_after_a_delay(tmp_path: Path) -> None:
    prog = write(tmp_path, "service.py", SERVICE)
    # the consumer started before 'ready' is in that baseline: not the program's leftover then
    out = busmon_run("--baseline-at", "ready", "--report", str(tmp_path / "r.json"), "--", PY, str(prog), "--leak",
                     stdin="x\n")
    assert out.returncode == 0, out.stderr
    data = report(tmp_path / "r.json")
    assert phases(data)[:3] == ["ready", "baseline", "consumer stopped"]
    assert "baseline taken at the mark 'ready'" in data["runs"][0]["notes"]
    # a mark the program never sets: judged from the start, and said
    out = busmon_run("--baseline-at", "never", "--settle-timeout", "0.3", "--report", str(tmp_path / "n.json"),
                     "--", PY, str(prog), "--leak", stdin="x\n")
    assert out.returncode == 1
    assert any("not marked 'never'" in n for n in report(tmp_path / "n.json")["runs"][0]["notes"])
    # a delay longer than the program lives: judged from the start, and said
    out = busmon_run("--baseline-after", "30", "--settle-timeout", "0.3", "--report", str(tmp_path / "d.json"),
                     "--", PY, str(prog), "--leak", stdin="x\n")
    assert out.returncode == 1
    assert any("judged before the baseline asked for" in n for n in report(tmp_path / "d.json")["runs"][0]["notes"])


def test_ctrl_c_is_passed_on_and_what_was_left_is_judged(tmp_path: Path) -> None:
    prog = write(tmp_path, "forever.py", """
        import asyncio
        async def main():
            asyncio.create_task(asyncio.Event().wait(), name="left")
            print("ready", flush=True)
            await asyncio.Event().wait()
        asyncio.run(main())
    """)
    proc = start_run("--settle-timeout", "0.3", "--", PY, str(prog))
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)  # to busmon, not to a terminal: busmon passes it on
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "leaked 1 task" in err and "cancelled by Ctrl-C" in err
    assert "ended by signal" not in err or "SIGINT" in err


def test_sigterm_handled_by_the_program_ends_it_cleanly(tmp_path: Path) -> None:
    prog = write(tmp_path, "graceful.py", """
        import asyncio, signal
        async def main():
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            worker = asyncio.create_task(stop.wait(), name="worker")
            print("ready", flush=True)
            await stop.wait()
            await worker
        asyncio.run(main())
    """)
    proc = start_run("--", PY, str(prog))
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "is clean" in err


@pytest.mark.parametrize("argv, message", [
    (["ls"], "ls is not a Python program"),
    (["no-such-program-here"], "no-such-program-here: no such program"),
    ([], "Missing argument '-- COMMAND...'"),
    ([PY, "-I", "-c", "print('ran')"], "-I (isolated) keeps busmon's agent out"),
    ([PY, "-B", "-E", "-c", "print('ran')"], "-E (ignores PYTHONPATH) keeps busmon's agent out"),
])
def test_a_command_that_cannot_carry_the_agent_is_one_line_and_exit_2(argv: list[str], message: str) -> None:
    out = busmon_run("--", *argv)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout == ""  # refused before it ran: never unwatched


def test_a_python_that_cannot_import_busmon_does_not_run_the_program(tmp_path: Path) -> None:
    # the agent's fallback finds busmon where busmon run found it; a broken copy of it on the
    # program's own path comes first and fails to import: the program must not run unwatched
    fake = tmp_path / "shadow" / "busmon"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('a broken busmon')\n")
    marker = tmp_path / "ran"
    prog = write(tmp_path, "p.py", f"open({str(marker)!r}, 'w').close()\n")
    out = busmon_run("--", PY, str(prog), env={"PYTHONPATH": str(tmp_path / "shadow")})
    assert out.returncode == 2, out.stderr
    assert "cannot import busmon's agent" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_a_program_without_an_event_loop_is_said_in_one_line(tmp_path: Path) -> None:
    prog = write(tmp_path, "plain.py", "print('no loop')\n")
    out = busmon_run("--", PY, str(prog))
    assert out.returncode == 0 and out.stdout == "no loop\n"
    assert "never ran an asyncio event loop: no task was judged" in out.stderr


def test_several_loops_each_judged_and_named(tmp_path: Path) -> None:
    prog = write(tmp_path, "loops.py", """
        import asyncio, threading

        async def worker_main():
            asyncio.create_task(asyncio.Event().wait(), name="worker-leftover")
            await asyncio.sleep(0)

        def worker():
            asyncio.run(worker_main())

        async def main():
            t = threading.Thread(target=worker, name="worker-loop")
            t.start()
            await asyncio.to_thread(t.join)

        asyncio.run(main())
    """)
    out = busmon_run("--settle-timeout", "0.3", "--report", str(tmp_path / "r.json"), "--", PY, str(prog))
    assert out.returncode == 1, out.stderr
    data = report(tmp_path / "r.json")
    worker = next(r for r in data["runs"] if "loop in thread worker-loop" in r["name"])
    main = next(r for r in data["runs"] if "loop in thread" not in r["name"])
    assert [x["name"] for x in leaked(data, data["runs"].index(worker))] == ["worker-leftover"]
    assert main["verdict"] == "clean"  # the worker's thread exited; its executor thread is asyncio's, idle


def test_a_loop_driven_by_hand_is_judged_when_the_program_closes_it(tmp_path: Path) -> None:
    prog = write(tmp_path, "hand.py", """
        import asyncio
        async def main():
            asyncio.get_running_loop().create_task(asyncio.Event().wait(), name="by-hand")
        loop = asyncio.new_event_loop()
        loop.run_until_complete(main())
        loop.close()
    """)
    out = busmon_run("--settle-timeout", "0.3", "--report", str(tmp_path / "r.json"), "--", PY, str(prog))
    assert out.returncode == 1, out.stderr
    [task] = leaked(report(tmp_path / "r.json"))
    assert task["name"] == "by-hand"


def test_python_dash_m_and_the_programs_own_sitecustomize(tmp_path: Path) -> None:
    pkg = tmp_path / "svc"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text("import asyncio, os\nasync def main():\n    print(os.environ.get('CUSTOMIZED'))\n"
                                     "asyncio.run(main())\n")
    own = tmp_path / "own"
    own.mkdir()
    (own / "sitecustomize.py").write_text("import os\nos.environ['CUSTOMIZED'] = 'yes'\n")
    out = busmon_run("--", PY, "-m", "svc", cwd=tmp_path, env={"PYTHONPATH": str(own)})
    assert out.returncode == 0, out.stderr
    assert out.stdout == "yes\n" and "python -m svc is clean" in out.stderr


def test_the_programs_children_run_without_the_agent(tmp_path: Path) -> None:
    prog = write(tmp_path, "parent.py", """
        import asyncio, os, sys
        async def main():
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "import os; print(os.environ.get('BUSMON_AGENT'), os.environ.get('PYTHONPATH'))")
            await child.wait()
        asyncio.run(main())
    """)
    out = busmon_run("--", PY, str(prog), env={"PYTHONPATH": "/somewhere/own"})
    assert out.returncode == 0, out.stderr
    assert out.stdout == "None /somewhere/own\n"


def test_marks_cost_nothing_and_import_nothing_without_busmon(tmp_path: Path) -> None:
    prog = write(tmp_path, "alone.py", """
        import asyncio, sys
        import busmon.agent
        async def main():
            busmon.agent.mark("ready")
            async with busmon.agent.phase("load"):
                pass
            with busmon.agent.phase("sync"):
                pass
        asyncio.run(main())
        print(busmon.agent.active(), sorted(m for m in sys.modules if m.startswith("busmon.")))
    """)
    out = subprocess.run([PY, str(prog)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "False ['busmon.agent']\n"


def test_phases_from_the_program_are_phases_of_the_report(tmp_path: Path) -> None:
    prog = write(tmp_path, "phased.py", """
        import asyncio
        import busmon.agent
        async def main():
            async with busmon.agent.phase("load"):
                tasks = [asyncio.create_task(asyncio.sleep(0)) for _ in range(50)]
                await asyncio.gather(*tasks)
        asyncio.run(main())
    """)
    out = busmon_run("--report", str(tmp_path / "r.json"), "--record", str(tmp_path / "r.jsonl"), "--", PY, str(prog))
    assert out.returncode == 0, out.stderr
    assert phases(report(tmp_path / "r.json")) == ["baseline", "load", "shutdown", "settle"]
    replayed = subprocess.run([PY, "-m", "busmon", "replay", "--headless", str(tmp_path / "r.jsonl")],
                              capture_output=True, text=True, timeout=60)
    assert replayed.returncode == 0, replayed.stderr


def _line_within(stream, timeout: float) -> str:
    """The next line of a child's output, waiting at most ``timeout`` (a hang fails, said)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, f"no line within {timeout} s"
    return stream.readline()


MARKER = """
    import asyncio, sys
    import busmon.agent
    async def main():
        print("ready", flush=True)
        sys.stdin.readline()               # until the test has stopped or killed busmon
        for i in range(3000):              # far more than a pipe holds, nobody reading
            busmon.agent.mark(f"m{i}")
        print("marked", flush=True)
    asyncio.run(main())
"""


def test_busmon_killed_leaves_the_program_running_to_its_end(tmp_path: Path) -> None:
    prog = write(tmp_path, "survivor.py", MARKER)
    proc = subprocess.Popen([PY, "-m", "busmon", "run", "--", PY, str(prog)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert _line_within(proc.stdout, 60) == "ready\n"
        proc.kill()
        proc.wait(timeout=30)
        proc.stdin.write("go\n")
        proc.stdin.close()
        # busmon's orphan now, the program goes on: its marks go nowhere and never block it
        assert _line_within(proc.stdout, 60) == "marked\n"
    finally:
        proc.kill()


def test_a_stopped_busmon_never_blocks_the_program_and_drops_are_counted(tmp_path: Path) -> None:
    prog = write(tmp_path, "busy.py", MARKER)
    proc = subprocess.Popen([PY, "-m", "busmon", "run", "--", PY, str(prog)], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert _line_within(proc.stdout, 60) == "ready\n"
        os.kill(proc.pid, signal.SIGSTOP)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert _line_within(proc.stdout, 60) == "marked\n"  # while busmon reads nothing
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=60)
    finally:
        os.kill(proc.pid, signal.SIGCONT) if proc.poll() is None else None
        proc.kill()
    assert proc.returncode == 0, err
    assert "events dropped by the agent" in err and "is clean" in err


def test_secrets_in_the_programs_arguments_never_reach_busmons_output(tmp_path: Path) -> None:
    prog = write(tmp_path, "secret.py", """
        import asyncio, sys
        async def main():
            asyncio.create_task(asyncio.Event().wait(), name=f"conn {sys.argv[1]}")
        asyncio.run(main())
    """)
    url = "nats://bob:s3cretpw@127.0.0.1:4222"
    out = busmon_run("--settle-timeout", "0.2", "--report", str(tmp_path / "r.json"), "--report", str(tmp_path / "r.md"),
                     "--record", str(tmp_path / "r.jsonl"), "--", PY, str(prog), url)
    assert out.returncode == 1, out.stderr
    own = [line for line in out.stderr.splitlines() if "Task was destroyed" not in line and "task: <Task" not in line]
    assert "nats://bob:***@127.0.0.1:4222" in "\n".join(own)  # the program's own asyncio message is its own
    assert not any("s3cretpw" in line for line in own)
    for name in ("r.json", "r.md", "r.jsonl"):
        assert "s3cretpw" not in (tmp_path / name).read_text(), name


@pytest.mark.parametrize("how", ["uvloop.run", "policy", "by hand"])
def test_programs_on_uvloop_are_judged(tmp_path: Path, how: str) -> None:
    pytest.importorskip("uvloop")
    prog = write(tmp_path, "uv.py", """
        import asyncio, sys, uvloop
        async def main():
            asyncio.create_task(asyncio.Event().wait(), name="forgotten")
            await asyncio.sleep(0)
        how = sys.argv[1]
        if how == "uvloop.run":
            uvloop.run(main())
        elif how == "policy":
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            asyncio.run(main())
        else:
            loop = uvloop.new_event_loop()
            loop.run_until_complete(main())
            loop.close()
    """)
    out = busmon_run("--settle-timeout", "0.3", "--report", str(tmp_path / "r.json"), "--", PY, str(prog), how)
    assert out.returncode == 1, out.stderr
    # only the program's forgotten task: nothing of uvloop's own (its per-run socketpair) is blamed
    assert [x["name"] for x in leaked(report(tmp_path / "r.json"))] == ["forgotten"]


def test_a_forked_child_is_not_the_program_and_says_nothing(tmp_path: Path) -> None:
    prog = write(tmp_path, "forky.py", """
        import asyncio, multiprocessing as mp
        async def child_main():
            asyncio.create_task(asyncio.Event().wait(), name="in-child")
            await asyncio.sleep(0)
        def child():
            asyncio.run(child_main())
        async def main():
            p = mp.get_context("fork").Process(target=child)
            p.start()
            await asyncio.to_thread(p.join)
            print("child exit", p.exitcode, flush=True)
        asyncio.run(main())
    """)
    out = busmon_run("--settle-timeout", "0.3", "--report", str(tmp_path / "r.json"), "--", PY, str(prog))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "child exit 0\n"
    data = report(tmp_path / "r.json")
    assert len(data["runs"]) == 1 and data["runs"][0]["verdict"] == "clean"  # the child's loop: not judged
    assert "in-child" not in out.stderr


def test_retained_counts_what_the_program_made_and_still_holds(tmp_path: Path) -> None:
    prog = write(tmp_path, "cache.py", """
        import asyncio
        CACHE = {}
        class Session:
            def __init__(self, i):
                self.buffer = bytearray(1000)
        async def main():
            for i in range(500):
                CACHE[i] = Session(i)
        asyncio.run(main())
    """)
    out = busmon_run("--retained", "--report", str(tmp_path / "r.json"), "--", PY, str(prog))
    assert out.returncode == 0, out.stderr  # held on purpose is not a leak: told, not failed
    kept = report(tmp_path / "r.json")["runs"][0]["memory"]["retained_since_baseline"]
    assert kept[0]["type"] == "__main__.Session" and kept[0]["count"] == 500
    assert kept[0]["size_bytes"] >= 500 * 1000  # each with the buffer only it holds
    assert "500 __main__.Session" in out.stderr
    assert not any(x["type"] == "coroutine" for x in kept)  # busmon's own verdict is not the program's
    plain = busmon_run("--report", str(tmp_path / "p.json"), "--", PY, str(prog))
    assert plain.returncode == 0, plain.stderr
    assert "retained_since_baseline" not in report(tmp_path / "p.json")["runs"][0]["memory"]


def test_a_verdict_at_a_mark_judges_what_was_there_then_and_never_holds_the_program(tmp_path: Path) -> None:
    prog = write(tmp_path, "marked.py", """
        import asyncio, time, sys
        import busmon.agent
        async def main():
            t = asyncio.create_task(asyncio.Event().wait(), name="before-the-mark")
            busmon.agent.mark("ready")
            later = asyncio.create_task(asyncio.sleep(0.05), name="after-the-mark")  # new work, not left over
            await asyncio.sleep(0.2)
            print("returning", flush=True)  # "before-the-mark" still running: the program forgot it
        started = time.monotonic()
        asyncio.run(main())
        print(f"held {time.monotonic() - started:.1f}", flush=True)
    """)
    out = busmon_run("--verdict-at", "ready", "--settle-timeout", "30", "--report", str(tmp_path / "r.json"),
                     "--", PY, str(prog))
    assert out.returncode == 1, out.stderr
    held = float(out.stdout.split("held ")[1])
    assert held < 10  # the 30 s wait was cut short when the program ended, not sat out
    left = leaked(report(tmp_path / "r.json"))
    assert [x["name"] for x in left] == ["before-the-mark"]  # nothing of busmon's, nothing started after
    notes = report(tmp_path / "r.json")["runs"][0]["notes"]
    assert any("the program ended while busmon waited" in n for n in notes)


def test_ctrl_c_while_busmon_waits_judges_at_once_without_a_traceback(tmp_path: Path) -> None:
    prog = write(tmp_path, "leaves.py", """
        import asyncio
        async def main():
            asyncio.get_running_loop().create_task(asyncio.Event().wait(), name="left")
        asyncio.run(main())
    """)
    proc = start_run("--settle-timeout", "60", "--", PY, str(prog))
    try:
        said = []
        for line in proc.stderr:
            said.append(line)
            if "waiting up to 60 s" in line:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)  # well within the 60 s it would have waited
    finally:
        proc.kill()
    assert proc.returncode == 1, "".join(said) + err  # the verdict's code: the program had returned
    assert "leaked 1 task" in err and "Ctrl-C while busmon waited" in err
    assert "Traceback" not in err


HELD_TASKS = """
    import asyncio
    HELD = []
    async def hang():
        await asyncio.Event().wait()
    async def main():
        HELD.extend(asyncio.create_task(hang(), name=f"held-{i}") for i in range(5))
        print("ready", flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["to busmon's process group", "twice to busmon at once"])
def test_a_signal_sent_twice_reaches_the_program_once_and_the_verdict_stands(tmp_path: Path, how: str) -> None:
    """Without a terminal the program has a process group of its own: a SIGINT to busmon's group
    (kill -INT -PGID) reaches it once, through busmon, and the same signal twice at once (timeout
    signals busmon, then its group) is one. Twice, asyncio raised KeyboardInterrupt inside the
    verdict: 'nothing was judged' in 4 of 8 runs here."""
    prog = write(tmp_path, "held.py", HELD_TASKS)
    for _ in range(3):
        proc = subprocess.Popen([PY, "-m", "busmon", "run", "--settle-timeout", "0.3", "--", PY, str(prog)], text=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            assert _line_within(proc.stdout, 60) == "ready\n"
            if how == "to busmon's process group":
                os.killpg(proc.pid, signal.SIGINT)
            else:
                proc.send_signal(signal.SIGINT)
                proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:  # the program has a process group of its own: killed by pid
                for child in psutil.Process(proc.pid).children(recursive=True):
                    child.kill()
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert "leaked 5 tasks" in err and "nothing was judged" not in err, err
