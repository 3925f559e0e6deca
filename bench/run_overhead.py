"""What ``busmon run`` costs a program: throughput, latency, memory, and how soon the verdict.

Run by hand from the repository root (it starts its own nats-server on loopback)::

    python -m bench.run_overhead [--repeat 10] [--requests 20000] [--tasks 10000] [--json PATH]

1. A nats-py request/reply service under load (bench/programs/nats_load.py), started plainly
   and under ``busmon run`` in interleaved pairs, each a fresh process: requests per second and
   p99 latency, the ratio per pair. Target: >= 0.99 with the agent and nobody attached.
2. The same program's verdict: ``verdict_ms`` (last exit → verdict ready) from busmon's report.
3. 10,000 idle tasks (bench/programs/idle_tasks.py): the program's resident memory with them
   alive, plain and under busmon (the difference is the agent's), and the verdict's time once
   all 10,000 exited. Targets: <= 20 MB, <= 20 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.results_file import write_results
from busmon.bus.brokers_local import nats_server

PROGRAMS = Path(__file__).resolve().parent / "programs"


def _run(argv: list[str], under_busmon: bool, report: Path | None = None) -> dict[str, Any]:
    cmd = [sys.executable, *argv]
    if under_busmon:
        extra = ["--report", str(report)] if report is not None else []
        cmd = [sys.executable, "-m", "busmon", "run", "--settle-timeout", "2", *extra, "--", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _verdict_ms(report: Path) -> float:
    data = json.loads(report.read_text())
    return data["runs"][0]["verdict_ms"]


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--json", type=Path, default=Path("bench/results/run_overhead.json"))
    args = p.parse_args()
    results: dict[str, Any] = {"repeat": args.repeat, "requests": args.requests, "tasks": args.tasks}
    tmp = Path(tempfile.mkdtemp(prefix="busmon-bench-"))
    with nats_server() as broker:
        load = [str(PROGRAMS / "nats_load.py"), "--server", broker.url, "--requests", str(args.requests)]
        _run(load, False)  # warm-up: the broker's first connections, the OS's page cache
        pairs = []
        verdicts = []
        for i in range(args.repeat):
            order = (False, True) if i % 2 == 0 else (True, False)
            got = {}
            for under in order:
                report = tmp / f"load-{i}.json" if under else None
                got[under] = _run(load, under, report)
                if under:
                    verdicts.append(_verdict_ms(report))
            pairs.append(got)
            print(f"pair {i + 1}: plain {got[False]['req_per_s']:,.0f} req/s p99 {got[False]['p99_ms']} ms · "
                  f"busmon run {got[True]['req_per_s']:,.0f} req/s p99 {got[True]['p99_ms']} ms")
        ratios = [g[True]["req_per_s"] / g[False]["req_per_s"] for g in pairs]
        results["throughput"] = {
            "plain_req_per_s": spread([g[False]["req_per_s"] for g in pairs]),
            "agent_req_per_s": spread([g[True]["req_per_s"] for g in pairs]),
            "ratio": spread(ratios),
            "plain_p99_ms": spread([g[False]["p99_ms"] for g in pairs]),
            "agent_p99_ms": spread([g[True]["p99_ms"] for g in pairs]),
        }
        results["load_verdict_ms"] = spread(verdicts)
    idle = [str(PROGRAMS / "idle_tasks.py"), "--tasks", str(args.tasks)]
    plain_rss, agent_rss, idle_verdicts = [], [], []
    for i in range(max(3, args.repeat // 2)):
        plain_rss.append(_run(idle, False)["rss_mb"])
        report = tmp / f"idle-{i}.json"
        agent_rss.append(_run(idle, True, report)["rss_mb"])
        idle_verdicts.append(_verdict_ms(report))
    results["idle_tasks"] = {"plain_rss_mb": spread(plain_rss), "agent_rss_mb": spread(agent_rss),
                             "agent_mb": round(statistics.median(agent_rss) - statistics.median(plain_rss), 2),
                             "verdict_ms": spread(idle_verdicts)}
    print(json.dumps(results, indent=2))
    write_results(args.json, results)


if __name__ == "__main__":
    main()
