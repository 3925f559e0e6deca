"""What ``--metrics`` costs: the load's throughput with Prometheus scraping every second, and
how long an exposition of 10,000 tasks in 100 components takes to make.

Run by hand from the repository root (needs the metrics extra)::

    python -m bench.metrics_overhead [--repeat 15] [--messages 1000000] [--json PATH]

1. ``busmon play --headless`` on the embedded memory bus, one run of ``--messages`` envelopes
   flat out, in pairs: without ``--metrics``, and with ``--metrics`` scraped once a second by a
   scraper in this process (as Prometheus would, over HTTP) for the whole run; each a fresh
   process, the order alternating; deliveries per second from busmon's JSON report, the ratio
   per pair. Target: >= 0.99.
2. The exposition in-process: a feed holding 10,000 tasks in 100 components, rendered with
   ``prometheus_client.generate_latest`` (the process figures read too). Target: <= 20 ms.
3. A real scrape of a program under ``busmon run --metrics`` holding 10,000 idle tasks made by
   100 modules of its own (bench/programs/component_tasks.py): the first scrape (the loop
   classifies the 10,000 tasks then) and the ones after, over HTTP.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.results_file import write_results
from bench.run_overhead import spread
from busmon.bus.brokers_local import free_port

PROGRAMS = Path(__file__).resolve().parent / "programs"
SCENARIO = """
name = "metrics overhead"
backend = "memory"
[[runs]]
name = "load"
messages = {messages}
publishers = 4
"""


def scrape(port: int) -> float:
    """One scrape over HTTP: its time in ms (raises if nothing listens)."""
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        r.read()
    return (time.perf_counter() - t0) * 1000


def play(scenario: Path, report: Path, metrics: bool) -> tuple[float, int]:
    """One ``busmon play`` of the scenario: deliveries per second, and scrapes made meanwhile."""
    port = free_port()
    cmd = [sys.executable, "-m", "busmon", "play", str(scenario), "--headless", "--report", str(report)]
    if metrics:
        cmd += ["--metrics", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    done = threading.Event()
    scrapes = 0

    def scraper() -> None:
        nonlocal scrapes
        while not done.is_set():
            try:
                scrape(port)
                scrapes += 1
            except OSError:  # not listening yet (or gone): look again soon
                done.wait(0.05)
                continue
            done.wait(1.0)  # Prometheus's 1 s interval

    thread = threading.Thread(target=scraper)
    if metrics:
        thread.start()
    try:
        _, err = proc.communicate(timeout=600)
    finally:
        done.set()
        if metrics:
            thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"busmon play failed ({proc.returncode}): {err[-2000:]}")
    run = json.loads(report.read_text())["runs"][0]
    return run["throughput"]["deliver_per_s"], scrapes


def render_in_process(rounds: int) -> list[float]:
    from prometheus_client import CollectorRegistry, generate_latest

    from busmon.probes.metrics.exposition import BusmonCollector
    from busmon.probes.metrics.feed import MetricsFeed
    from busmon.probes.model import Sample
    from busmon.probes.observe import loop_totals

    loop_totals.enable()
    feed = MetricsFeed()
    feed.put(Sample(run="r", phase="load", t_s=1.0, tasks=10_000, threads=4, os_threads=4,
                    by_component={f"app.component_{i:03}": 100 for i in range(100)}, published=1, delivered=1,
                    expected=1, publish_per_s=0.0, deliver_per_s=0.0, latency_ms={}, rss_mb=50.0, cpu_percent=0.0,
                    open_fds=10))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BusmonCollector(feed, mode="play", version="bench"))
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        generate_latest(registry)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def scrape_a_program(tmp: Path, scrapes: int) -> dict[str, Any]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "busmon", "run", "--metrics", str(port), "--", sys.executable,
                             str(PROGRAMS / "component_tasks.py"), "--modules", str(tmp / "modules")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n", proc.stderr.read()
        first = scrape(port)
        rest = [scrape(port) for _ in range(scrapes)]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            text = r.read().decode()
        series = sum(1 for line in text.splitlines() if line.startswith("busmon_tasks{"))
    finally:
        proc.communicate(input="", timeout=120)
    return {"first_ms": round(first, 2), "ms": spread(rest), "busmon_tasks_series": series}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--json", type=Path, default=Path("bench/results/metrics_overhead.json"))
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="busmon-bench-"))
    scenario = tmp / "load.toml"
    scenario.write_text(SCENARIO.format(messages=args.messages))
    play(scenario, tmp / "warm.json", False)  # warm-up: the OS's page cache, the .pyc files
    pairs = []
    for i in range(args.repeat):
        got = {}
        for arm in (("plain", "metrics") if i % 2 == 0 else ("metrics", "plain")):
            got[arm] = play(scenario, tmp / f"{arm}-{i}.json", arm == "metrics")
        pairs.append(got)
        print(f"pair {i + 1}: plain {got['plain'][0]:,.0f}/s · metrics {got['metrics'][0]:,.0f}/s "
              f"({got['metrics'][1]} scrapes) · ratio {got['metrics'][0] / got['plain'][0]:.3f}", flush=True)
    results: dict[str, Any] = {
        "repeat": args.repeat, "messages": args.messages,
        "play": {"plain_deliver_per_s": spread([g["plain"][0] for g in pairs]),
                 "metrics_deliver_per_s": spread([g["metrics"][0] for g in pairs]),
                 "scrapes_per_run": spread([g["metrics"][1] for g in pairs]),
                 "ratio": spread([g["metrics"][0] / g["plain"][0] for g in pairs])},
    }
    render = render_in_process(200)
    results["render_10000_tasks_100_components_ms"] = {**spread(render), "p99": round(sorted(render)[197], 3)}
    results["program_scrape_10000_tasks_100_components"] = scrape_a_program(tmp, 50)
    print(json.dumps(results, indent=2))
    write_results(args.json, results)


if __name__ == "__main__":
    main()
