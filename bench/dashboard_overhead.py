"""Does watching slow the bus? Load throughput with the dashboard attached vs without, one run.

Run by hand from the repository root::

    python -m bench.dashboard_overhead [--repeat 5] [--messages 200000]

Three ways to play the same single-run scenario on the memory bus, interleaved:
  bare       the arena and probes, events dropped (no display at all)
  dashboard  the Textual dashboard attached, rendered off screen (Textual's headless
             driver, 120x40), no screenshots
The ratio dashboard / bare is the cost of watching. Target: >= 0.9. Because wall-clock
throughput on a shared 2-core VM swings by tens of percent between runs, the bench also
records the UI thread's own CPU time during the load phase (``time.thread_time``), which is
what the dashboard takes from the bus through the GIL.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from bench.results_file import write_results
from busmon.probes.harness.scenario import parse_scenario
from busmon.probes.harness.session import Session

SCENARIO = """
name = "dashboard overhead"
backend = "memory"
[probes]
interval_ms = 100
[defaults]
keys = 100
topics = 2
publishers = 2
payload_bytes = 256
[[runs]]
name = "load"
messages = {messages}
"""


def bare(messages: int) -> float:
    sc = parse_scenario(SCENARIO.format(messages=messages), "bench.toml")
    with Session(sc, lambda e: None) as session:
        (run,) = session.play().runs
    assert run.verdict == "clean" and run.delivery["lost"] == 0
    return run.throughput["deliver_per_s"]


def dashboard(messages: int) -> tuple[float, float]:
    """Throughput with the dashboard attached, and the UI thread's CPU share during load."""
    import time

    from busmon.probes.model import PhaseSnapshot, PhaseStarted
    from busmon.tui.app import BusmonApp
    from busmon.tui.controller import Controller

    class TimedApp(BusmonApp):
        """Notes the UI thread's CPU time when load starts and ends (as the UI sees them)."""

        marks: dict[str, tuple[float, float]] = {}

        def apply(self, event: object) -> None:
            if isinstance(event, PhaseStarted) and event.phase == "load":
                self.marks["start"] = (time.thread_time(), time.perf_counter())
            if isinstance(event, PhaseSnapshot) and event.phase == "load":
                self.marks["end"] = (time.thread_time(), time.perf_counter())
            super().apply(event)

    sc = parse_scenario(SCENARIO.format(messages=messages), "bench.toml")
    controller = Controller(sc, interactive=False)
    app = TimedApp(controller, exit_when_done=True)
    try:
        app.run(headless=True, size=(120, 40))
    finally:
        controller.shutdown()
    assert app.done is not None and app.done.result is not None
    (run,) = app.done.result.runs
    assert run.verdict == "clean" and run.delivery["lost"] == 0
    (c0, w0), (c1, w1) = app.marks["start"], app.marks["end"]
    return run.throughput["deliver_per_s"], (c1 - c0) / (w1 - w0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--json", type=Path, default=Path("bench/results/dashboard_overhead.json"))
    a = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    rows = []
    for i in range(a.repeat):  # interleaved so machine drift hits both alike
        b = bare(a.messages)
        d, ui_share = dashboard(a.messages)
        rows.append({"bare": b, "dashboard": d, "ratio": d / b, "ui_cpu_share_during_load": ui_share})
        print(f"  {i + 1}: bare {b:,.0f}/s   dashboard {d:,.0f}/s   ratio {d / b:.3f}   "
              f"UI thread CPU during load {ui_share:.1%}", flush=True)
    ratio = statistics.median(r["ratio"] for r in rows)
    ui = statistics.median(r["ui_cpu_share_during_load"] for r in rows)
    out = {
        "messages": a.messages, "repeat": a.repeat,
        "bare_median": statistics.median(r["bare"] for r in rows),
        "dashboard_median": statistics.median(r["dashboard"] for r in rows),
        "ratio": round(ratio, 3), "ratio_min": round(min(r["ratio"] for r in rows), 3),
        "ratio_max": round(max(r["ratio"] for r in rows), 3), "target": 0.9, "ui_cpu_share_during_load_median": round(ui, 4),
        "runs": rows,
    }
    print(f"dashboard / bare throughput (median of pairs): {ratio:.3f} ({out['ratio_min']:.3f}–"
          f"{out['ratio_max']:.3f}) (target >= 0.9); "
          f"the UI thread took {ui:.1%} of a CPU during load")
    write_results(a.json, out)


if __name__ == "__main__":
    main()
