"""What measuring costs: load throughput with probes on vs off, and time to verdict.

Run by hand from the repository root::

    python -m bench.probe_overhead [--repeat 5] [--idle-tasks 10000] [--json PATH]

1. Load throughput on the memory bus with every probe on (tasks and threads sampled at
   10 Hz, descriptors, children, the loop watchdog's 20 ms beats, the retained-memory
   checkpoint and verdict) and ``--idle-tasks`` extra idle tasks alive on the arena loop,
   against the same run with the probes off (no task factory, no sampler, no watchdog),
   interleaved, in one process. Target: ratio >= 0.97. With ``--trace-memory``, a third
   arm measures ``trace_memory = true`` (tracemalloc), reported apart: it is opt-in.
2. Time from the last leftover's exit to the verdict (GC + final census +
   classification), with a bus whose task exits 300 ms after close, against
   the post-mortem's fixed 3-5 s sleeps. Target: <= 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

from bench.results_file import write_results
from busmon.probes.harness.scenario import parse_scenario
from busmon.probes.harness.session import Session

LOAD = """
name = "overhead"
backend = "memory"
[probes]
interval_ms = 100
settle_timeout_s = 5
trace_memory = {trace}
[defaults]
keys = 100
topics = 1
payload_bytes = 256
[[runs]]
name = "load"
messages = {messages}
"""

LINGER = """
name = "verdict latency"
backend = "tests.leaky_buses:SlowExit"
[bus]
linger_ms = 300
[probes]
settle_timeout_s = 5
[[runs]]
name = "linger"
messages = 1000
"""


async def _idle(n: int, release: asyncio.Event) -> list[asyncio.Task]:
    return [asyncio.create_task(release.wait(), name=f"bench.idle-{i}") for i in range(n)]


def one(probes_on: bool, idle: int, messages: int, trace: bool = False) -> dict:
    sc = parse_scenario(LOAD.format(messages=messages, trace=str(trace).lower()), "overhead.toml")
    with Session(sc, lambda e: None, probes_on=probes_on) as session:
        release = asyncio.Event()
        tasks = session.arena.run(_idle(idle, release))
        (run,) = session.play().runs
        session.arena.call_soon(release.set)
        session.arena.run(asyncio.wait(tasks))
    assert run.verdict == "clean" and run.delivery["lost"] == 0, (run.verdict, run.retained(), run.leftovers)
    return {"deliver_per_s": run.throughput["deliver_per_s"], "verdict_ms": run.verdict_ms,
            "memory_judge_ms": run.memory.get("judge_ms"), "stalls": len(run.stalls)}


def verdict_latency(idle: int) -> dict:
    sc = parse_scenario(LINGER, "linger.toml")
    with Session(sc, lambda e: None) as session:
        release = asyncio.Event()
        tasks = session.arena.run(_idle(idle, release))
        (run,) = session.play().runs
        session.arena.call_soon(release.set)
        session.arena.run(asyncio.wait(tasks))
    (left,) = [x for x in run.leftovers if x.state == "exited"]
    return {"exited_after_ms": left.exited_after_ms, "settle_ms": run.settle_ms, "verdict_ms": run.verdict_ms,
            "memory_judge_ms": run.memory.get("judge_ms")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--idle-tasks", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--json", type=Path, default=Path("bench/results/probe_overhead.json"))
    parser.add_argument("--trace-memory", action="store_true", help="also measure trace_memory = true")
    a = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    on, off, traced = [], [], []
    for i in range(a.repeat):  # interleaved so machine drift hits both alike
        off.append(one(False, a.idle_tasks, a.messages))
        on.append(one(True, a.idle_tasks, a.messages))
        if a.trace_memory:
            traced.append(one(True, a.idle_tasks, a.messages, trace=True))
        print(f"  {i + 1}: probes off {off[-1]['deliver_per_s']:,.0f}/s   on {on[-1]['deliver_per_s']:,.0f}/s"
              + (f"   traced {traced[-1]['deliver_per_s']:,.0f}/s" if traced else ""), flush=True)
    med_on = statistics.median(r["deliver_per_s"] for r in on)
    med_off = statistics.median(r["deliver_per_s"] for r in off)
    # each pair ran back to back, so its ratio cancels most of the machine's drift
    ratios = [a_["deliver_per_s"] / b_["deliver_per_s"] for a_, b_ in zip(on, off, strict=True)]
    pair_ratio = statistics.median(ratios)
    lat = [verdict_latency(a.idle_tasks) for _ in range(a.repeat)]
    verdict_ms = statistics.median(r["verdict_ms"] for r in lat)
    out = {
        "idle_tasks": a.idle_tasks, "messages": a.messages, "repeat": a.repeat,
        "deliver_per_s_probes_off_median": med_off, "deliver_per_s_probes_on_median": med_on,
        "ratio": round(pair_ratio, 3), "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3),
        "ratio_of_medians": round(med_on / med_off, 3), "ratio_target": 0.97,
        "verdict_ms_median": verdict_ms, "verdict_ms_min": min(r["verdict_ms"] for r in lat), "verdict_ms_max": max(r["verdict_ms"] for r in lat),
        "verdict_ms_target": 20, "runs": {"on": on, "off": off, "traced": traced, "verdict": lat},
        "memory_judge_ms_median": statistics.median(r["memory_judge_ms"] for r in lat),
    }
    if traced:
        out["trace_memory_ratio"] = round(statistics.median(
            t["deliver_per_s"] / b_["deliver_per_s"] for t, b_ in zip(traced, off, strict=True)), 3)
        out["trace_memory_verdict_ms_median"] = statistics.median(r["verdict_ms"] for r in traced)
    print(f"probes on/off throughput ratio (median of pairs): {out['ratio']:.3f} "
          f"({out['ratio_min']:.3f}–{out['ratio_max']:.3f}) (target >= 0.97); "
          f"median {med_on:,.0f} vs {med_off:,.0f} msg/s with {a.idle_tasks:,} idle tasks")
    print(f"last exit → verdict: median {verdict_ms:.1f} ms, max {out['verdict_ms_max']:.1f} ms "
          f"(target <= 20 ms; the post-mortem slept 3-5 s), of which the memory verdict "
          f"{out['memory_judge_ms_median']:.1f} ms")
    if traced:
        print(f"trace_memory on/off throughput ratio: {out['trace_memory_ratio']:.3f}; verdict "
              f"{out['trace_memory_verdict_ms_median']:.1f} ms (opt-in, not held to the targets)")
    write_results(a.json, out)


if __name__ == "__main__":
    main()
