"""What the pytest plugin costs per test: absent, installed but not asked, and judging every test.

Run by hand from the repository root::

    python -m bench.plugin_overhead [--tests 300] [--repeat 5] [--json PATH]

A generated suite of ``--tests`` clean tests of each kind (sync; async under pytest-asyncio;
async that starts a task and awaits it; sync that starts and joins a thread) runs in a fresh
pytest process per arm, arms interleaved, ``--repeat`` times:

- ``absent``: ``-p no:busmon`` (as if busmon were not installed);
- ``inactive``: installed, not asked (no marker, no flag): should cost nothing;
- ``--busmon``: every test judged (baseline before the body, settle and verdict after teardown).

The figure is pytest's own session time (collection and run, not interpreter start), median
of the repeats, and the cost per test is the difference to ``absent`` over the number of tests.
"""

from __future__ import annotations

import argparse
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


def session_seconds(folder: Path, kind: str, arm: list[str]) -> float:
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                          f"test_{kind.replace('-', '_')}.py", *arm],
                         cwd=folder, capture_output=True, text=True, check=False)
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
        for kind, template in KINDS.items():
            body = "\n".join(template.format(i=i) for i in range(args.tests))
            (folder / f"test_{kind.replace('-', '_')}.py").write_text(SUITE.format(tests=body))
        for kind in KINDS:
            times: dict[str, list[float]] = {arm: [] for arm in ARMS}
            for _ in range(args.repeat):
                for arm, flags in ARMS.items():  # interleaved: drift hits every arm alike
                    times[arm].append(session_seconds(folder, kind, flags))
            base = statistics.median(times["absent"])
            results[kind] = {}
            for arm, values in times.items():
                median = statistics.median(values)
                results[kind][arm] = {
                    "session_s": round(median, 3), "min_s": min(values), "max_s": max(values),
                    "per_test_ms": round(1000 * median / args.tests, 3),
                    "cost_per_test_ms": round(1000 * (median - base) / args.tests, 3),
                }
            row = ", ".join(f"{arm} {v['per_test_ms']:.2f} ms/test ({v['cost_per_test_ms']:+.2f})"
                            for arm, v in results[kind].items())
            print(f"{kind:>10}: {row}")
    write_results(args.json, {"tests": args.tests, "repeat": args.repeat, "results": results})


if __name__ == "__main__":
    main()
