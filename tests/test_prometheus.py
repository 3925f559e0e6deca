"""busmon's metrics scraped by a real Prometheus (Debian's package), and the README's alert
rules checked and unit-tested by promtool, then loaded into that server and fired by a real
leak.

Three busmon processes on loopback: ``busmon run`` on a clean program, ``busmon run`` on one
that leaks a task, and ``busmon play --headless`` on the memory bus, which waits for the
scrape of its last verdict (``--metrics-linger``) before exiting.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


from busmon.bus.brokers_local import free_port
from tests.prometheus_server import Prometheus, binary, poll
from tests.run_programs import TIMEOUT_S, write

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "sample_configs" / "prometheus" / "busmon_alerts.yml"
RULES_TEST = Path(__file__).resolve().parent / "prometheus" / "busmon_alerts_test.yml"

#: a service: five consumers until told to stop ("stop" on stdin), then a verdict at the mark
#: "stopped" (--verdict-at), then it serves on until stdin closes. --leak: one consumer is
#: never stopped (held, so it is leaked rather than destroyed)
SERVICE = """
    import asyncio, sys
    import busmon.agent

    HELD = []

    async def consume(queue):
        while True:
            await queue.get()

    async def main():
        loop = asyncio.get_running_loop()
        stdin = asyncio.StreamReader()  # read on the loop: no thread of the program's blocks in it
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        queue = asyncio.Queue()
        consumers = [asyncio.create_task(consume(queue), name=f"consumer-{i}") for i in range(5)]
        busmon.agent.mark("serving")
        await stdin.readline()
        if "--leak" in sys.argv:
            HELD.append(consumers.pop())
        for c in consumers:
            c.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        busmon.agent.mark("stopped")
        await stdin.read()

    asyncio.run(main())
"""

SCENARIO = """
    name = "metrics"
    backend = "memory"
    [[runs]]
    name = "steady"
    messages = 3000
    rate_per_s = 1500
"""


def last(selector: str) -> str:
    """The series' last value in the past ten minutes, whether its process still runs or not."""
    return f"last_over_time({selector}[10m])"


def start(args: list[str], tmp: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "busmon", *args], cwd=tmp, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    """Close its stdin (the programs end at its end) and wait for busmon: its code and stderr."""
    try:
        _, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"busmon did not end: {err}")
    return proc.returncode, err


def test_the_readme_alert_rules_are_the_file_promtool_checks_and_they_fire_as_said():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(# busmon's alert rules.*?)```", readme, re.S)
    assert block is not None, "the README shows the alert rules"
    assert block.group(1) == RULES.read_text()
    check = subprocess.run([binary("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 2 rules found" in check.stdout, check.stdout + check.stderr
    unit = subprocess.run([binary("promtool"), "test", "rules", RULES_TEST.name], cwd=RULES_TEST.parent,
                          capture_output=True, text=True)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def test_prometheus_scrapes_a_clean_program_a_leaking_one_and_a_played_scenario(tmp_path):
    write(tmp_path, "service.py", SERVICE)
    (tmp_path / "steady.toml").write_text(SCENARIO)
    ports = {"clean": free_port(), "leaky": free_port(), "play": free_port()}
    where = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    prom = Prometheus(tmp_path, {"busmon": list(where.values())}, rule_files=[RULES])
    procs: dict[str, subprocess.Popen] = {}
    try:
        run = ["run", "--settle-timeout", "0.5", "--verdict-at", "stopped", "--metrics"]
        procs["clean"] = start([*run, where["clean"], "--", sys.executable, "service.py"], tmp_path)
        procs["leaky"] = start([*run, where["leaky"], "--", sys.executable, "service.py", "--leak"], tmp_path)
        procs["play"] = start(["play", "steady.toml", "--headless", "--metrics", where["play"],
                               "--metrics-linger", "30"], tmp_path)

        # live: each program's five consumers, by component, in Prometheus
        consumers = poll(lambda: (q := prom.query('busmon_tasks{component="__main__"}'))
                         and all(q.get(where[n], 0) >= 5 for n in ("clean", "leaky")) and q,
                         "both programs' consumers scraped")
        assert consumers[where["clean"]] >= 5
        for name in ("clean", "leaky"):
            procs[name].stdin.write("stop\n")
            procs[name].stdin.flush()

        # (the played scenario's process may be gone by now: its last values, not only live ones)
        leaked = poll(lambda: (q := prom.query(last('busmon_last_verdict{verdict="leaked"}'))) and len(q) == 3 and q,
                      "three verdicts scraped")
        assert leaked == {where["clean"]: 0.0, where["leaky"]: 1.0, where["play"]: 0.0}
        left = prom.query(last('busmon_leftovers{kind="task",state="leaked"}'))
        assert left[where["leaky"]] == 1.0 and left[where["clean"]] == 0.0
        assert len(prom.query(last('busmon_verdicts_total{verdict="clean"}'))) == 3

        # the played scenario's counters, the loop's lag histogram, the process figures
        assert prom.query(last("busmon_delivered_total"))[where["play"]] == 3000.0
        assert prom.query(last("busmon_published_total"))[where["play"]] == 3000.0
        lag = prom.query(last("busmon_loop_lag_seconds_count"))
        assert all(lag.get(w, 0) > 0 for w in where.values()), lag
        for gauge in ("busmon_threads", "busmon_open_fds", "busmon_rss_bytes"):
            values = prom.query(last(gauge))
            assert all(values.get(w, 0) > 0 for w in where.values()), (gauge, values)
        # busmon's own sockets (the metrics listener, the scrape's connection) never counted: a
        # program holds its loop's self-pipe (2), busmon play on the memory bus its arena's, or none
        sockets = prom.query("max_over_time(busmon_sockets[10m])")
        assert sockets[where["clean"]] == sockets[where["leaky"]] == 2 and sockets[where["play"]] <= 2, sockets
        assert set(prom.query(last('busmon_info{mode="run"}'))) == {where["clean"], where["leaky"]}

        # the README's rule, loaded into the server, fires for the leaking program only
        firing = poll(lambda: prom.query('ALERTS{alertname="BusmonLeaked",alertstate="firing"}'),
                      "BusmonLeaked firing")
        assert set(firing) == {where["leaky"]}
        rules = prom.api("rules")["groups"][0]["rules"]
        assert {r["name"] for r in rules} == {"BusmonLeaked", "BusmonTasksGrowing"}
        assert all(r["health"] == "ok" for r in rules), rules

        codes = {name: finish(proc) for name, proc in procs.items()}
        assert codes["clean"][0] == 0, codes["clean"][1]
        assert codes["leaky"][0] == 1, codes["leaky"][1]
        assert codes["play"][0] == 0 and "busmon: scraped" in codes["play"][1], codes["play"][1]
        assert f"metrics: http://{where['clean']}/metrics" in codes["clean"][1]
    finally:
        try:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=TIMEOUT_S)
        finally:
            prom.stop()  # whatever went wrong above: no Prometheus outlives the test
