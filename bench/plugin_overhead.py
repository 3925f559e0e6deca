"""What the pytest plugin costs per test: absent, installed but not asked, and judging every test.

Run by hand from the repository root::

    python -m bench.plugin_overhead [--tests 300] [--repeat 5] [--json PATH]

A generated suite of ``--tests`` clean tests of each kind (sync; async under pytest-asyncio;
async that starts a task and awaits it; sync that starts and joins a thread) runs in a fresh
pytest process per arm, arms interleaved, ``--repeat`` times:

- ``absent``: ``-p no:busmon`` (as if busmon were not installed);
- ``inactive``: installed, not asked (no marker, no flag): should cost nothing;
- ``--busmon``: every test judged (baseline before the body, settle and verdict after teardown).

Two figures: pytest's own session time (collection and run, not interpreter start), median of
the repeats, whose difference to ``absent`` over the number of tests is the cost per test as a
user sees it (this VM's noise is tens of percent between sessions: read it with its min–max);
and, in the ``--busmon`` arm, busmon's own time per test measured inside the process (the
baseline in ``Watch.start`` plus the settle and verdict in ``Watch.settle_blocking``, timed by a
``conftest.py`` of the generated suite), which that noise does not blur.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.results_file import write_results

SUITE = '''
import asyncio, threading

{tests}
'''
KINDS = {
    "sync": "def test_sync_{i}():\n    assert sum(range(10)) == 45\n",
    "async": "async def test_async_{i}():\n    await asyncio.sleep(0)\n",
    "async-task": ("async def test_async_task_{i}():\n"
                   "    await asyncio.create_task(asyncio.sleep(0))\n"),
    "thread": ("def test_thread_{i}():\n    t = threading.Thread(target=lambda: None)\n"
               "    t.start()\n    t.join()\n"),
}
ARMS = {"absent": ["-p", "no:busmon"], "inactive": [], "--busmon": ["--busmon"]}
INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
#: times busmon's own work per test (baseline, then settle and verdict) when BUSMON_BENCH_TIMES is set
CONFTEST = '''
import json, os, time
from probes.watch import Watch

OUT = os.environ.get("BUSMON_BENCH_TIMES")
TIMES = {"start": [], "verdict": []}

def timed(name, fn):
    def run(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name].append(time.perf_counter() - t)
    return run

if OUT:
    Watch.start = timed("start", Watch.start)
    Watch.settle_blocking = timed("verdict", Watch.settle_blocking)

def pytest_unconfigure(config):
    if OUT:
        with open(OUT, "w") as f:
            json.dump(TIMES, f)
'''


def session_seconds(folder: Path, kind: str, arm: list[str], times: Path | None = None) -> float:
    env = {k: v for k, v in os.environ.items() if k != "BUSMON_BENCH_TIMES"}
    if times is not None:
        env["BUSMON_BENCH_TIMES"] = str(times)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                          f"test_{kind.replace('-', '_')}.py", *arm],
                         cwd=folder, capture_output=True, text=True, check=False, env=env)
    found = re.search(r"passed in ([0-9.]+)s", out.stdout)
    if out.returncode != 0 or found is None:
        raise SystemExit(f"{kind} {arm}: pytest failed\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("bench/results/plugin_overhead.json"))
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="busmon-plugin-bench-") as tmp:
        folder = Path(tmp)
        (folder / "pytest.ini").write_text(INI)
        (folder / "conftest.py").write_text(CONFTEST)
        times_file = folder / "times.json"
        for kind, template in KINDS.items():
            body = "\n".join(template.format(i=i) for i in range(args.tests))
            (folder / f"test_{kind.replace('-', '_')}.py").write_text(SUITE.format(tests=body))
        for kind in KINDS:
            times: dict[str, list[float]] = {arm: [] for arm in ARMS}
            own: dict[str, list[float]] = {"start": [], "verdict": []}
            for _ in range(args.repeat):
                for arm, flags in ARMS.items():  # interleaved: drift hits every arm alike
                    watched = arm == "--busmon"
                    times[arm].append(session_seconds(folder, kind, flags, times_file if watched else None))
                    if watched:
                        for part, values in json.loads(times_file.read_text()).items():
                            own[part] += values
            base = statistics.median(times["absent"])
            results[kind] = {}
            for arm, values in times.items():
                median = statistics.median(values)
                results[kind][arm] = {
                    "session_s": round(median, 3), "min_s": min(values), "max_s": max(values),
                    "per_test_ms": round(1000 * median / args.tests, 3),
                    "cost_per_test_ms": round(1000 * (median - base) / args.tests, 3),
                }
            per_test = [a + b for a, b in zip(own["start"], own["verdict"])]
            results[kind]["busmon_own_ms"] = {
                "baseline_median": round(1000 * statistics.median(own["start"]), 3),
                "verdict_median": round(1000 * statistics.median(own["verdict"]), 3),
                "per_test_median": round(1000 * statistics.median(per_test), 3),
                "per_test_p99": round(1000 * sorted(per_test)[int(0.99 * (len(per_test) - 1))], 3),
            }
            row = ", ".join(f"{arm} {v['per_test_ms']:.2f} ms/test ({v['cost_per_test_ms']:+.2f}, "
                            f"{1000 * v['min_s'] / args.tests:.2f}–{1000 * v['max_s'] / args.tests:.2f})"
                            for arm, v in results[kind].items() if arm in ARMS)
            mine = results[kind]["busmon_own_ms"]
            print(f"{kind:>10}: {row}; busmon's own work {mine['per_test_median']:.3f} ms/test "
                  f"(baseline {mine['baseline_median']:.3f} + verdict {mine['verdict_median']:.3f}; "
                  f"p99 {mine['per_test_p99']:.3f})")
    write_results(args.json, {"tests": args.tests, "repeat": args.repeat, "results": results})


if __name__ == "__main__":
    main()
