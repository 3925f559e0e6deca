"""``--metrics``: what the feed adds up, the bounded component label, the exposition read by
``prometheus_client``'s own parser, the server inside a real program (its scrapes never the
program's leftovers, a blocked loop still scraped), and bad input in one line.

Prometheus itself scraping busmon is in tests/test_prometheus.py.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from busmon.bus.brokers_local import free_port
from busmon.probes.metrics.address import ListenAddressError, parse_listen
from busmon.probes.metrics.exposition import BusmonCollector, top_components
from busmon.probes.metrics.feed import MetricsFeed
from busmon.probes.model import Leftover, PhaseStarted, RunFinished, RunResult, Sample
from tests.run_programs import TIMEOUT_S, assert_one_line, busmon_cli, report, write


def sample(run: str, published: int = 0, delivered: int = 0, errors: dict[str, int] | None = None,
           by_component: dict[str, int] | None = None) -> Sample:
    return Sample(run=run, phase="load", t_s=0.1, tasks=0, threads=1, os_threads=1,
                  by_component=by_component or {}, published=published, delivered=delivered, expected=0,
                  publish_per_s=0.0, deliver_per_s=0.0, latency_ms={}, rss_mb=1.0, cpu_percent=0.0, open_fds=3,
                  errors=errors or {})


def finished(run: str, verdict: str, published: int, received: int, leftovers: tuple[Leftover, ...] = (),
             counters: dict[str, int] | None = None) -> RunFinished:
    return RunFinished(RunResult(name=run, backend="memory", verdict=verdict, phases=(), settle_ms=0.0,
                                 leftovers=leftovers, delivery={"published": published, "received": received},
                                 throughput={}, counters=counters or {}))


def families(collector: BusmonCollector) -> dict[str, dict[tuple, float]]:
    """The collector's output, rendered and parsed back by prometheus_client: name → labels → value."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_play_counters_only_grow_across_runs_and_a_name_played_again():
    feed = MetricsFeed()
    for n in (100, 400, 1000):
        feed.put(sample("a", published=n, delivered=n - 50, errors={"handler": n // 100}))
    feed.put(finished("a", "clean", 1000, 1000, counters={"handler_errors": 12}))
    feed.put(sample("a", published=1000, delivered=1000))   # the finished run's last samples: counted once
    feed.put(sample("", published=1000, delivered=1000))    # between runs
    feed.put(PhaseStarted("a", "create", 0.0))               # the same name again (compare: another backend)
    feed.put(sample("a", published=300, delivered=200, errors={"publish": 2}))
    r = feed.read()
    assert (r.published, r.delivered) == (1300, 1200)
    assert r.errors == {"handler": 12, "decode": 0, "publish": 2}
    feed.put(finished("a", "leaked", 500, 500, leftovers=(
        Leftover("task", "t", "bus.pool", "leaked", None), Leftover("task", "u", "bus.pool", "leaked", None),
        Leftover("thread", "th", "x", "exited", 3.0))))
    r = feed.read()
    assert (r.published, r.delivered) == (1500, 1500)
    assert r.verdicts == {"clean": 1, "leaked": 1} and r.generation == 2
    assert r.last is not None and r.last.verdict == "leaked"
    assert dict(r.last.leftovers) == {("task", "leaked"): 2, ("thread", "exited"): 1}


def test_the_component_label_is_bounded_and_the_exposition_parses():
    feed = MetricsFeed()
    by_component = {f"svc.handler_{i:03}": 100 for i in range(100)}  # 10,000 tasks in 100 components
    by_component["svc.handler_042"] = 500
    feed.put(sample("r", by_component=by_component))
    feed.put(finished("r", "leaked", 10, 10, leftovers=(Leftover("socket", "s", "x", "leaked", None),)))
    out = families(BusmonCollector(feed, mode="play", version="9.9", top=20))
    tasks = {dict(k)["component"]: v for k, v in out["busmon_tasks"].items()}
    assert len(tasks) == 21 and tasks["svc.handler_042"] == 500 and tasks["other"] == 80 * 100
    assert sum(tasks.values()) == sum(by_component.values())
    assert top_components({"a": 1, "other": 2, "b": 3}, 1) == {"b": 3, "other": 3}
    assert out["busmon_last_verdict"][(("verdict", "leaked"),)] == 1.0
    assert out["busmon_last_verdict"][(("verdict", "clean"),)] == 0.0
    assert out["busmon_leftovers"][(("kind", "socket"), ("state", "leaked"))] == 1.0
    assert out["busmon_leftovers"][(("kind", "task"), ("state", "leaked"))] == 0.0
    assert out["busmon_info"] == {(("mode", "play"), ("version", "9.9")): 1.0}
    assert out["busmon_published_total"][()] == 10.0


def test_no_verdict_yet_means_no_verdict_gauges():
    out = families(BusmonCollector(MetricsFeed(), mode="run", version="1"))
    assert "busmon_last_verdict" not in out and "busmon_leftovers" not in out
    assert "busmon_published_total" not in out  # a program publishes nothing of busmon's
    assert out["busmon_verdicts_total"][(("verdict", "leaked"),)] == 0.0


@pytest.mark.parametrize("text, expected", [
    ("9464", ("127.0.0.1", 9464)), (":9464", ("127.0.0.1", 9464)), ("localhost:0", ("localhost", 0)),
    ("[::1]:9464", ("::1", 9464)),
])
def test_listen_addresses(text, expected):
    assert parse_listen("--metrics", text) == expected


@pytest.mark.parametrize("text, said", [
    ("0.0.0.0:9464", "not a loopback address"), ("[::]:9464", "not a loopback address"),
    ("9464x", "PORT a number"), ("127.0.0.1:70000", "from 0 to 65535"), ("::1:9464", "in brackets"),
])
def test_listen_addresses_refused(text, said):
    with pytest.raises(ListenAddressError, match=said):
        parse_listen("--metrics", text)
    if "loopback" in said:
        assert parse_listen("--metrics", text, public=True)[1] == 9464


PROGRAM = """
    import asyncio, pathlib, sys
    pathlib.Path("ran").write_text("yes")

    async def main():
        await asyncio.sleep(0)

    asyncio.run(main())
"""


def test_bad_metrics_input_is_one_line_and_the_program_never_runs(tmp_path, taken_port):
    write(tmp_path, "prog.py", PROGRAM)
    scenario = Path(__file__).resolve().parent.parent / "sample_configs" / "quickstart.toml"
    play, run = ["play", str(scenario), "--headless"], ["--", sys.executable, "prog.py"]
    blocked = "import sys; sys.modules['prometheus_client'] = None; "  # as if the extra were not installed
    refused = [
        ([*play, "--metrics", "0.0.0.0:9464"], "", ("--metrics 0.0.0.0", "--metrics-public")),
        ([*play, "--metrics", f"127.0.0.1:{taken_port}"], "", (f"127.0.0.1:{taken_port}", "the port is in use")),
        (["run", "--metrics", "10.1.2.3:9464", *run], "", ("not a loopback address",)),
        # the port is taken: the agent cannot listen, and the program does not run unwatched
        (["run", "--metrics", str(taken_port), *run], "", ("the port is in use",)),
        (["run", "--metrics", "0", *run], blocked, ("pip install -e '.[metrics]'",)),
        ([*play, "--metrics", "0"], blocked, ("pip install -e '.[metrics]'",)),
    ]
    for args, prelude, said in refused:
        assert_one_line(busmon_cli(*args, cwd=tmp_path, prelude=prelude), *said)
    assert not (tmp_path / "ran").exists()


#: a service whose tasks come from three modules of its own: 15, 10 and 5 of them wait until
#: a line comes on stdin, then end; the program ends at stdin's end
BUSY = """
    import asyncio, sys
    from workers_a import work as a
    from workers_b import work as b
    from workers_c import work as c

    async def main():
        loop = asyncio.get_running_loop()
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        go = asyncio.Event()
        tasks = [asyncio.create_task(f(go)) for f in (a, a, a, b, b, c) for _ in range(5)]
        await stdin.readline()
        go.set()
        await asyncio.gather(*tasks)
        await stdin.read()

    asyncio.run(main())
"""
WORKERS = """
    async def work(go):
        await go.wait()
"""


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        return r.read().decode()


def task_series(text: str) -> dict[str, float]:
    return {s.labels["component"]: s.value for f in text_string_to_metric_families(text)
            if f.name == "busmon_tasks" for s in f.samples}


def test_scrapes_during_the_run_and_its_verdict_are_never_the_programs_leftovers(tmp_path):
    """A scraper hammers the agent's endpoint from the program's start to its end, its verdict
    included: the verdict is clean (no socket, no thread of the scrapes'), and busmon_tasks
    names the two biggest components, the third as other (--metrics-components 2)."""
    write(tmp_path, "busy.py", BUSY)
    for m in "abc":
        write(tmp_path, f"workers_{m}.py", WORKERS)
    port = free_port()
    scraped: list[dict[str, float]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                scraped.append(task_series(scrape(port)))
            except OSError:
                continue  # not listening yet, or gone

    proc = subprocess.Popen([sys.executable, "-m", "busmon", "run", "--metrics", str(port), "--metrics-components",
                             "2", "--report", "r.json", "--", sys.executable, "busy.py"], cwd=tmp_path,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    scraper = threading.Thread(target=hammer)
    scraper.start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not any(s.get("workers_a") == 15 for s in scraped):
            assert time.monotonic() < deadline and proc.poll() is None, scraped[-3:]
            stop.wait(0.05)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        _, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        stop.set()
        scraper.join(timeout=30)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    data = report(tmp_path / "r.json")
    assert data["runs"][0]["verdict"] == "clean"
    assert not [lo for lo in data["runs"][0]["leftovers"] if lo["kind"] in ("socket", "thread", "fd")]
    assert all(len(s) <= 3 for s in scraped), [s for s in scraped if len(s) > 3]  # the top 2, and other
    full = next(s for s in scraped if s.get("workers_a") == 15)
    assert full == {"workers_a": 15, "workers_b": 10, "other": 5 + 1}  # workers_c and the main task


#: the program's loop blocked for a second (its own fault): a scrape meanwhile still answers
BLOCKING = """
    import asyncio, sys, time

    async def main():
        loop = asyncio.get_running_loop()
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        await stdin.readline()
        time.sleep(1.5)   # the program blocks its own loop (what busmon calls a stall)
        await stdin.read()

    asyncio.run(main())
"""


def test_a_blocked_loop_is_still_scraped_and_its_stall_counted(tmp_path):
    write(tmp_path, "blocking.py", BLOCKING)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "busmon", "run", "--metrics", str(port), "--", sys.executable,
                             "blocking.py"], cwd=tmp_path, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None and "metrics: http://" in proc.stderr.readline()
        proc.stdin.write("block\n")
        proc.stdin.flush()
        text = scrape(port)  # while the loop is blocked: answered (the loop's own numbers kept)
        assert "busmon_info{" in text
        deadline = time.monotonic() + TIMEOUT_S
        while True:  # the stall is counted once the loop runs again
            fams = {f.name: f for f in text_string_to_metric_families(scrape(port))}
            if fams["busmon_loop_stalls"].samples[0].value >= 1:
                break
            assert time.monotonic() < deadline, "no stall counted"
        lag = {s.labels.get("le"): s.value for s in fams["busmon_loop_lag_seconds"].samples
               if s.name.endswith("_bucket")}
        assert lag["+Inf"] > lag["1.0"]  # the heartbeat that came ≥ 1 s late is in the histogram
    finally:
        proc.stdin.close()
        proc.wait(timeout=TIMEOUT_S)
    assert proc.returncode == 0


#: three workers alive at the mark "checked" (--verdict-at: judged there, the program goes on),
#: four more after it; all end when told
GOES_ON = """
    import asyncio, sys
    import busmon.agent

    async def worker(go):
        await go.wait()

    async def main():
        loop = asyncio.get_running_loop()
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        go = asyncio.Event()
        workers = [asyncio.create_task(worker(go)) for _ in range(3)]
        busmon.agent.mark("checked")
        await stdin.readline()
        workers += [asyncio.create_task(worker(go)) for _ in range(4)]
        print("more", flush=True)
        await stdin.readline()
        go.set()
        await asyncio.gather(*workers)

    asyncio.run(main())
"""


def test_after_a_verdict_at_a_mark_the_programs_tasks_are_still_counted_as_its_own(tmp_path):
    """Judged at a mark, the program goes on: each scrape still counts its tasks by component
    (the watch keeps classifying), and busmon's own tasks and descriptors are never in them."""
    write(tmp_path, "goes_on.py", GOES_ON)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "busmon", "run", "--metrics", str(port), "--verdict-at", "checked",
                             "--settle-timeout", "0.3", "--", sys.executable, "goes_on.py"], cwd=tmp_path,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None and "metrics: http://" in proc.stderr.readline()
        deadline = time.monotonic() + TIMEOUT_S
        while "busmon_last_verdict{" not in (text := scrape(port)):  # the verdict at the mark
            assert time.monotonic() < deadline and proc.poll() is None, text
        assert 'busmon_last_verdict{verdict="leaked"} 1.0' in text  # three workers alive at the mark
        proc.stdin.write("more\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "more\n"
        fams = {f.name: f for f in text_string_to_metric_families(scrape(port))}
        tasks = {s.labels["component"]: s.value for s in fams["busmon_tasks"].samples}
        assert tasks == {"__main__": 3 + 4 + 1}  # the main task too; nothing of busmon's, nothing unnamed
        assert fams["busmon_sockets"].samples[0].value == 2  # the loop's self-pipe; not the scrape's
        proc.stdin.write("go\n")
        proc.stdin.flush()
        proc.stdin.close()
        assert proc.wait(timeout=TIMEOUT_S) == 1  # the mark's verdict: leaked
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
