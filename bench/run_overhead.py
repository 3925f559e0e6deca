"""What ``busmon run`` costs a program: throughput, latency, memory, and how soon the verdict.

Run by hand from the repository root (it starts its own nats-server on loopback)::

    python -m bench.run_overhead [--repeat 10] [--requests 20000] [--tasks 10000] [--json PATH]

1. A nats-py request/reply service under load (bench/programs/nats_load.py), started plainly,
   under ``busmon run`` (the agent, nobody attached), and under ``busmon run --listen`` with the
   dashboard attached (off screen, bench/attached_dashboard.py) before the load starts; rounds
   of the three in rotating order, each a fresh process: requests per second and p99 latency,
   the ratios per round. Targets: >= 0.99 with the agent alone, >= 0.97 with the dashboard.
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


def _started(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _load(argv: list[str], arm: str, report: Path | None = None) -> dict[str, Any]:
    """One run of the load program: ``plain``, under ``agent`` (busmon run), or under ``dashboard``
    (busmon run --listen, with the dashboard attached off screen before the load starts)."""
    cmd = [sys.executable, *argv]
    if arm != "plain":
        extra = ["--report", str(report)] if report is not None else []
        listen = ["--listen"] if arm == "dashboard" else []
        cmd = [sys.executable, "-m", "busmon", "run", *listen, "--settle-timeout", "2", *extra, "--", *cmd]
    proc = _started(cmd)
    dash = None
    try:
        if arm == "dashboard":
            for line in proc.stderr:
                if "busmon attach " in line:
                    pid = line.split("busmon attach ")[1].split()[0]
                    break
            dash = _started([sys.executable, "-m", "bench.attached_dashboard", pid])
            assert dash.stdout.readline() == "attached\n", dash.stderr.read()
        assert proc.stdout.readline() == "ready\n"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-2000:]}")
        if dash is not None:
            dash.wait(timeout=60)
        return json.loads(out.strip().splitlines()[-1])
    finally:
        for p in (proc, dash):
            if p is not None and p.poll() is None:
                p.kill()


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
    arms = ("plain", "agent", "dashboard")
    with nats_server() as broker:
        load = [str(PROGRAMS / "nats_load.py"), "--server", broker.url, "--requests", str(args.requests)]
        _load(load, "plain")  # warm-up: the broker's first connections, the OS's page cache
        rounds = []
        verdicts = []
        for i in range(args.repeat):
            got = {}
            for arm in arms[i % 3:] + arms[:i % 3]:  # each arm first, second and third in turn
                report = tmp / f"load-{i}-{arm}.json" if arm != "plain" else None
                got[arm] = _load(load, arm, report)
                if report is not None:
                    verdicts.append(_verdict_ms(report))
            rounds.append(got)
            print(f"round {i + 1}: " + " · ".join(f"{a} {got[a]['req_per_s']:,.0f} req/s p99 {got[a]['p99_ms']} ms"
                                                  for a in arms), flush=True)
        results["throughput"] = {
            **{f"{a}_req_per_s": spread([g[a]["req_per_s"] for g in rounds]) for a in arms},
            **{f"{a}_p99_ms": spread([g[a]["p99_ms"] for g in rounds]) for a in arms},
            "agent_ratio": spread([g["agent"]["req_per_s"] / g["plain"]["req_per_s"] for g in rounds]),
            "dashboard_ratio": spread([g["dashboard"]["req_per_s"] / g["plain"]["req_per_s"] for g in rounds]),
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
