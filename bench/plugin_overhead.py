"""What the pytest plugin costs per test: absent, installed but not asked, judging every test,
with and without the event loop's watchdog.

Run by hand from the repository root::

    python -m bench.plugin_overhead [--tests 300] [--leak-tests 100] [--repeat 5] [--kinds ...]
                                    [--watchdog-cycles 2000] [--json PATH]

First, the watchdog alone: its start and stop as a watched async test pays them, timed in this
process ``--watchdog-cycles`` times.

A generated suite of ``--tests`` tests of each kind runs in a fresh pytest process per arm, arms
interleaved, ``--repeat`` times. Kinds, clean: sync; async under pytest-asyncio; async that starts
a task and awaits it; sync that starts and joins a thread; async under anyio on asyncio; async
under anyio on trio. Leaking (``--leak-tests`` each, every test judged ``leaked``): a task left
pending (anyio, asyncio) and a thread left waiting (anyio, trio: a trio test cannot leave a task
behind). The ``--busmon`` arms judge with ``busmon_settle_timeout_s = 0.05`` and
``busmon_on_leak = ignore``: a leaking test pays that wait in full, by design, and passes.

- ``absent``: ``-p no:busmon`` (as if busmon were not installed);
- ``inactive``: installed, not asked (no marker, no flag): should cost nothing;
- ``--busmon``: every test judged (baseline before the test's function fixtures, settle and
  verdict after teardown), an async test's loop watched for stalls (its watchdog: the default);
- ``--busmon stall_ms=0``: the same without the watchdog (``-o busmon_stall_ms=0``).

Two figures: pytest's own session time (collection and run, not interpreter start), median of
the repeats, whose difference to ``absent`` over the number of tests is the cost per test as a
user sees it (this VM's noise is tens of percent between sessions: read it with its min–max);
and, in the ``--busmon`` arms, busmon's own time per test measured inside the process (the
baseline in ``Watch.start`` plus the settle and verdict in ``Watch.settle_blocking``, timed by a
``conftest.py`` of the generated suite), which that noise does not blur. The watchdog's cost per
test is the difference of that own time between the two ``--busmon`` arms (arming it is in the
baseline, disarming it in the verdict; its one thread is started by the session's first watched
test and parked between tests; while armed, on a healthy loop, it wakes once per threshold).
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

ANYIO_ASYNCIO = """
import asyncio, pytest

pytestmark = pytest.mark.anyio

@pytest.fixture
def anyio_backend():
    return "asyncio"

HELD = []
"""
ANYIO_TRIO = """
import threading, pytest, trio

pytestmark = pytest.mark.anyio

@pytest.fixture
def anyio_backend():
    return "trio"

RELEASE = threading.Event()

@pytest.fixture(autouse=True, scope="module")
def release_at_the_end():
    yield
    RELEASE.set()
"""
PLAIN = "import asyncio, threading\n"
#: anyio's tests run without pytest-asyncio (whose auto mode would claim them)
NO_ASYNCIO = ("-p", "no:asyncio", "-W", "ignore::pytest.PytestConfigWarning")
#: kind → (header, one test, leaks); anyio's kinds run with NO_ASYNCIO
KINDS = {
    "sync": (PLAIN, "def test_sync_{i}():\n    assert sum(range(10)) == 45\n", False),
    "async": (PLAIN, "async def test_async_{i}():\n    await asyncio.sleep(0)\n", False),
    "async-task": (PLAIN, "async def test_async_task_{i}():\n    await asyncio.create_task(asyncio.sleep(0))\n",
                   False),
    "thread": (PLAIN, "def test_thread_{i}():\n    t = threading.Thread(target=lambda: None)\n"
                      "    t.start()\n    t.join()\n", False),
    "anyio-asyncio": (ANYIO_ASYNCIO, "async def test_anyio_asyncio_{i}():\n    await asyncio.sleep(0)\n", False),
    "anyio-trio": (ANYIO_TRIO, "async def test_anyio_trio_{i}():\n    await trio.sleep(0)\n", False),
    "anyio-asyncio-leak": (ANYIO_ASYNCIO, "async def test_leaks_a_task_{i}():\n"
                                          "    HELD.append(asyncio.create_task(asyncio.Event().wait()))\n", True),
    "anyio-trio-leak": (ANYIO_TRIO, "async def test_leaks_a_thread_{i}():\n"
                                    "    threading.Thread(target=RELEASE.wait, daemon=True).start()\n", True),
}
JUDGED = ["--busmon", "-o", "busmon_settle_timeout_s=0.05", "-o", "busmon_on_leak=ignore"]
ARMS = {"absent": ["-p", "no:busmon"], "inactive": [], "--busmon": JUDGED,
        "--busmon stall_ms=0": [*JUDGED, "-o", "busmon_stall_ms=0"]}
INI = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
#: times busmon's own work per test (baseline, then settle and verdict) when BUSMON_BENCH_TIMES is set
CONFTEST = '''
import json, os, time
from busmon.probes.watching.watch import Watch

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
    extra = NO_ASYNCIO if kind.startswith("anyio") else ()
    env = {k: v for k, v in os.environ.items() if k != "BUSMON_BENCH_TIMES"}
    if times is not None:
        env["BUSMON_BENCH_TIMES"] = str(times)
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                          test_file(kind), *extra, *arm],
                         cwd=folder, capture_output=True, text=True, check=False, env=env)
    found = re.search(r"\d+ passed.* in ([0-9.]+)s", out.stdout)
    if out.returncode != 0 or found is None:
        raise SystemExit(f"{kind} {arm}: pytest failed\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return float(found.group(1))


def watchdog_cycles(n: int) -> dict[str, float]:
    """The watchdog's own start and stop, as a watched test pays them, timed in this process:
    ``LoopWatch.start`` on a test's idle loop (armed on the shared watchdog thread, as
    ``Watch.start`` does; the thread is started once, before the timed cycles), one run of the
    loop (the body: one beat armed), ``LoopWatch.stop`` (the beat cancelled, disarmed). Medians
    and p90 over ``n`` cycles, less blurred by the machine's load than whole sessions are."""
    import asyncio
    import time

    from busmon.probes.observe.loopwatch import LoopWatch

    loop = asyncio.new_event_loop()
    starts: list[float] = []
    stops: list[float] = []
    try:
        warm = LoopWatch(loop, shared=True)  # the process's first watched test starts the thread
        warm.start(track_runs=True)
        warm.stop()
        for _ in range(n):
            t0 = time.perf_counter()
            watch = LoopWatch(loop, shared=True)
            watch.start(track_runs=True)
            t1 = time.perf_counter()
            loop.run_until_complete(asyncio.sleep(0))
            t2 = time.perf_counter()
            watch.stop()
            stops.append(time.perf_counter() - t2)
            starts.append(t1 - t0)
    finally:
        loop.close()
    both = sorted(a + b for a, b in zip(starts, stops))
    return {"start_median_ms": round(1000 * statistics.median(starts), 3),
            "stop_median_ms": round(1000 * statistics.median(stops), 3),
            "per_test_median_ms": round(1000 * statistics.median(both), 3),
            "per_test_p90_ms": round(1000 * both[int(0.9 * (len(both) - 1))], 3), "cycles": n}


def test_file(kind: str) -> str:
    return f"test_{kind.replace('-', '_')}.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", type=int, default=300, help="clean tests per kind (default 300)")
    parser.add_argument("--leak-tests", type=int, default=100,
                        help="leaking tests per kind: each waits the 0.05 s settle deadline (default 100)")
    parser.add_argument("--repeat", type=int, default=5, help="sessions per arm and kind (default 5)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, out of {', '.join(KINDS)}")
    parser.add_argument("--watchdog-cycles", type=int, default=2000,
                        help="the watchdog's start and stop alone, timed this many times (default 2000; 0: not)")
    parser.add_argument("--json", type=Path, default=Path("bench/results/plugin_overhead.json"))
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if unknown := [k for k in kinds if k not in KINDS]:
        parser.error(f"--kinds: unknown kind {unknown[0]!r}; expected some of {', '.join(KINDS)}")
    results: dict[str, dict[str, dict[str, float]]] = {}
    watchdog = watchdog_cycles(args.watchdog_cycles) if args.watchdog_cycles else {}
    if watchdog:
        print(f"the watchdog alone: {watchdog['per_test_median_ms']:.3f} ms per watched test (start "
              f"{watchdog['start_median_ms']:.3f} + stop {watchdog['stop_median_ms']:.3f}; p90 "
              f"{watchdog['per_test_p90_ms']:.3f}; {watchdog['cycles']} cycles)")
    with tempfile.TemporaryDirectory(prefix="busmon-plugin-bench-") as tmp:
        folder = Path(tmp)
        (folder / "pytest.ini").write_text(INI)
        (folder / "conftest.py").write_text(CONFTEST)
        times_file = folder / "times.json"
        for kind in kinds:
            header, template, leaks = KINDS[kind]
            n = args.leak_tests if leaks else args.tests
            body = "\n".join(template.format(i=i) for i in range(n))
            (folder / test_file(kind)).write_text(f"{header}\n{body}")
        for kind in kinds:
            n = args.leak_tests if KINDS[kind][2] else args.tests
            times: dict[str, list[float]] = {arm: [] for arm in ARMS}
            own: dict[str, dict[str, list[float]]] = {arm: {"start": [], "verdict": []} for arm in ARMS}
            for _ in range(args.repeat):
                for arm, flags in ARMS.items():  # interleaved: drift hits every arm alike
                    watched = arm.startswith("--busmon")
                    times[arm].append(session_seconds(folder, kind, flags, times_file if watched else None))
                    if watched:
                        for part, values in json.loads(times_file.read_text()).items():
                            own[arm][part] += values
            base = statistics.median(times["absent"])
            results[kind] = {"tests": n}  # type: ignore[dict-item]
            for arm, values in times.items():
                median = statistics.median(values)
                results[kind][arm] = {
                    "session_s": round(median, 3), "min_s": min(values), "max_s": max(values),
                    "per_test_ms": round(1000 * median / n, 3),
                    "cost_per_test_ms": round(1000 * (median - base) / n, 3),
                }
            row = ", ".join(f"{arm} {v['per_test_ms']:.2f} ms/test ({v['cost_per_test_ms']:+.2f}, "
                            f"{1000 * v['min_s'] / n:.2f}–{1000 * v['max_s'] / n:.2f})"
                            for arm, v in results[kind].items() if arm in ARMS)
            print(f"{kind:>18} ({n} tests): {row}")
            for arm, parts in own.items():
                if not parts["start"]:
                    continue
                per_test = [a + b for a, b in zip(parts["start"], parts["verdict"])]
                mine = results[kind][f"busmon_own_ms {arm}"] = {
                    "baseline_median": round(1000 * statistics.median(parts["start"]), 3),
                    "verdict_median": round(1000 * statistics.median(parts["verdict"]), 3),
                    "per_test_median": round(1000 * statistics.median(per_test), 3),
                    "per_test_p99": round(1000 * sorted(per_test)[int(0.99 * (len(per_test) - 1))], 3),
                    # the median of each session's own median: its spread is the session-to-session noise
                    "session_medians": sorted(round(1000 * statistics.median(per_test[i:i + n]), 3)
                                              for i in range(0, len(per_test), n)),
                }
                print(f"{'':>18} busmon's own work, {arm}: {mine['per_test_median']:.3f} ms/test "
                      f"(baseline {mine['baseline_median']:.3f} + verdict {mine['verdict_median']:.3f}; "
                      f"p99 {mine['per_test_p99']:.3f}; sessions {mine['session_medians'][0]:.3f}–"
                      f"{mine['session_medians'][-1]:.3f})")
            with_dog = results[kind].get("busmon_own_ms --busmon")
            without = results[kind].get("busmon_own_ms --busmon stall_ms=0")
            if with_dog and without:
                results[kind]["watchdog_ms"] = round(with_dog["per_test_median"] - without["per_test_median"], 3)
                print(f"{'':>18} the watchdog: {results[kind]['watchdog_ms']:+.3f} ms/test of busmon's own work")
    write_results(args.json, {"tests": args.tests, "leak_tests": args.leak_tests, "repeat": args.repeat,
                              "watchdog": watchdog, "results": results})


if __name__ == "__main__":
    main()
