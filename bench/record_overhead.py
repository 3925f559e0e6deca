"""What recording costs (``--record``), how big a recording grows, and how fast a long one opens.

Run by hand from the repository root::

    python -m bench.record_overhead [--repeat 5] [--idle-tasks 10000] [--messages 100000]
                                    [--busy-s 30] [--json PATH]

1. Load throughput on the memory bus with every probe on and ``--idle-tasks`` idle tasks alive,
   recording to a file against not recording, interleaved pairs in one process; and the loop
   watch's stalls in each arm (recording must not block the loop it records). Target: ratio
   >= 0.98.
2. Size: a busy run of ``--busy-s`` seconds at the default sampling rate (10 Hz) on a bus with
   100 components whose task counts change all the time (each starts short jobs every 50 ms),
   recorded: bytes per minute, plain and gzip. Target: <= 2 MB per minute.
3. Opening: that run's recording stretched to one hour (its samples repeated at their times,
   written with the same encoder), then replayed: time from opening the file to the dashboard
   showing its first run (Textual's headless driver), and to reading its length. Target: <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.probe_overhead import LOAD, _idle
from bench.results_file import write_results
from busmon.bus.memory import MemoryBus
from busmon.probes.harness.scenario import parse_scenario
from busmon.probes.harness.session import Session
from busmon.probes.model import Sample
from busmon.probes.recording.codec import Encoder, encode_header
from busmon.probes.recording.reader import open_recording
from busmon.probes.recording.records import Ended, Header
from busmon.probes.recording.writer import Recorder

BUSY = """
name = "busy"
backend = "bench.record_overhead:HundredComponents"
[probes]
interval_ms = 100
settle_timeout_s = 5
[[runs]]
name = "busy"
messages = {messages}
rate_per_s = 1000
"""

HEADER = Header("play", {"name": "bench"}, None, "memory://", "bench", sys.version.split()[0], sys.platform, "")


class HundredComponents:
    """The memory bus, and 100 components each starting a short job every 50 ms (jobs last
    0–200 ms): every sample sees most components' counts change."""

    def __init__(self, **options: Any) -> None:
        self.inner = MemoryBus(**options)
        self.counters = self.inner.counters
        self._tickers: list[asyncio.Task] = []
        self._jobs: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self.inner.start()
        self._tickers = [asyncio.create_task(self._tick(i), name=f"bus.c{i:03d}") for i in range(100)]

    async def _tick(self, i: int) -> None:
        rng = random.Random(i)
        n = 0
        while True:
            await asyncio.sleep(0.05)
            n += 1
            job = asyncio.create_task(asyncio.sleep(rng.random() * 0.2), name=f"bus.c{i:03d}-{n}")  # its component
            self._jobs.add(job)
            job.add_done_callback(self._jobs.discard)

    async def publish(self, topic: str, envelope: Any) -> None:
        await self.inner.publish(topic, envelope)

    async def subscribe(self, topic: str, handler: Any, *, group: str | None = None) -> Any:
        return await self.inner.subscribe(topic, handler, group=group)

    async def close(self) -> None:
        for t in self._tickers:
            t.cancel()
        await asyncio.gather(*self._tickers, return_exceptions=True)
        await asyncio.gather(*self._jobs, return_exceptions=True)
        await self.inner.close()


def one(recording: bool, idle: int, messages: int, folder: Path) -> dict:
    sc = parse_scenario(LOAD.format(messages=messages, trace="false"), "overhead.toml")  # probe_overhead's load
    recorder = Recorder(folder / "pair.jsonl", HEADER) if recording else None
    sink = recorder.put if recorder is not None else (lambda e: None)
    with Session(sc, sink) as session:
        release = asyncio.Event()
        tasks = session.arena.run(_idle(idle, release))
        (run,) = session.play().runs
        session.arena.call_soon(release.set)
        session.arena.run(asyncio.wait(tasks))
    if recorder is not None:
        recorder.close(Ended(False))
        assert recorder.error is None, recorder.error
    assert run.verdict == "clean" and run.delivery["lost"] == 0, (run.verdict, run.leftovers)
    return {"deliver_per_s": run.throughput["deliver_per_s"], "stalls": len(run.stalls),
            "lines": recorder.lines if recorder else 0}


def busy_recording(seconds: float, folder: Path) -> dict:
    """A recorded busy run; its size per minute, plain and gzip."""
    sc = parse_scenario(BUSY.format(messages=int(seconds * 1000)), "busy.toml")
    sizes = {}
    for name in ("busy.jsonl", "busy.jsonl.gz"):
        recorder = Recorder(folder / name, HEADER)
        t0 = time.monotonic()
        with Session(sc, recorder.put) as session:
            (run,) = session.play().runs
        recorder.close(Ended(False))
        elapsed = time.monotonic() - t0
        size = (folder / name).stat().st_size
        components = max((len(e.by_component) for _, e in open_recording(folder / name).events()
                          if isinstance(e, Sample)), default=0)
        sizes[name] = {"bytes": size, "seconds": round(elapsed, 1), "mb_per_min": round(size / elapsed * 60 / 1e6, 3),
                       "lines": recorder.lines, "components": components, "verdict": run.verdict}
    return sizes


def one_hour(source: Path, target: Path) -> dict:
    """``source``'s events repeated at their times until an hour is recorded."""
    events = [(t, e) for t, e in open_recording(source).events()]
    span = events[-1][0] + 0.1
    encoder = Encoder()
    n = 0
    with open(target, "w", encoding="utf-8") as f:
        f.write(json.dumps(encode_header(HEADER)) + "\n")
        offset = 0.0
        while offset < 3600:
            for t, e in events:
                f.write(json.dumps(encoder.encode(offset + t, e), separators=(",", ":")) + "\n")
                n += 1
            offset += span
        f.write(json.dumps(encoder.encode(offset, Ended(False))) + "\n")
    return {"bytes": target.stat().st_size, "lines": n, "recorded_s": round(offset)}


async def first_screen(path: Path) -> dict:
    """Opening ``path`` → the dashboard drawing its first run; and → knowing its length."""
    from busmon.tui.app import BusmonApp
    from busmon.tui.replay_controller import ReplayController

    t0 = time.perf_counter()
    rec = open_recording(path)
    length = rec.duration_hint()
    t_length = time.perf_counter() - t0
    controller = ReplayController(rec)
    app = BusmonApp(controller)
    async with app.run_test(size=(120, 40)) as pilot:
        deadline = time.monotonic() + 30
        while not app.state.run and time.monotonic() < deadline:
            await pilot.pause(0.01)
        shown = time.perf_counter() - t0
        assert app.state.run, "the first run never showed"
    controller.shutdown()
    return {"first_screen_s": round(shown, 3), "length_known_s": round(t_length, 4), "length_s": length}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--idle-tasks", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--busy-s", type=float, default=30.0)
    parser.add_argument("--json", type=Path, default=Path("bench/results/record_overhead.json"))
    a = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        on, off = [], []
        for i in range(a.repeat):  # interleaved so machine drift hits both alike
            off.append(one(False, a.idle_tasks, a.messages, folder))
            on.append(one(True, a.idle_tasks, a.messages, folder))
            print(f"  {i + 1}: not recording {off[-1]['deliver_per_s']:,.0f}/s   recording "
                  f"{on[-1]['deliver_per_s']:,.0f}/s   stalls {off[-1]['stalls']} / {on[-1]['stalls']}", flush=True)
        ratios = [x["deliver_per_s"] / y["deliver_per_s"] for x, y in zip(on, off, strict=True)]
        sizes = busy_recording(a.busy_s, folder)
        for name, s in sizes.items():
            print(f"  {name}: {s['bytes']:,} bytes in {s['seconds']} s ({s['components']} components): "
                  f"{s['mb_per_min']:.3f} MB per minute", flush=True)
        hour = one_hour(folder / "busy.jsonl", folder / "hour.jsonl")
        print(f"  one hour: {hour['bytes']:,} bytes, {hour['lines']:,} events", flush=True)
        opened = [asyncio.run(first_screen(folder / "hour.jsonl")) for _ in range(3)]
        with open(folder / "hour.jsonl", "rb") as src, gzip.open(folder / "hour.jsonl.gz", "wb") as dst:
            dst.write(src.read())
        opened_gz = [asyncio.run(first_screen(folder / "hour.jsonl.gz")) for _ in range(3)]
    out = {
        "idle_tasks": a.idle_tasks, "messages": a.messages, "repeat": a.repeat,
        "deliver_per_s_not_recording_median": statistics.median(x["deliver_per_s"] for x in off),
        "deliver_per_s_recording_median": statistics.median(x["deliver_per_s"] for x in on),
        "ratio": round(statistics.median(ratios), 3), "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3), "ratio_target": 0.98,
        "stalls_not_recording": [x["stalls"] for x in off], "stalls_recording": [x["stalls"] for x in on],
        "busy": sizes, "mb_per_min_target": 2.0, "one_hour": hour,
        "first_screen_s": [o["first_screen_s"] for o in opened], "length_known_s": [o["length_known_s"] for o in opened],
        "first_screen_gz_s": [o["first_screen_s"] for o in opened_gz],
        "first_screen_target_s": 1.0, "runs": {"on": on, "off": off},
    }
    print(f"recording on/off throughput ratio (median of pairs): {out['ratio']:.3f} "
          f"({out['ratio_min']:.3f}–{out['ratio_max']:.3f}) (target >= 0.98); loop stalls "
          f"{sum(out['stalls_recording'])} recording, {sum(out['stalls_not_recording'])} not")
    print(f"one-hour recording ({hour['bytes'] / 1e6:,.0f} MB): first screen in "
          f"{statistics.median(out['first_screen_s']):.2f} s (target <= 1 s), its length known in "
          f"{statistics.median(out['length_known_s']) * 1000:.1f} ms; gzip-compressed, first screen in "
          f"{statistics.median(out['first_screen_gz_s']):.2f} s")
    write_results(a.json, out)


if __name__ == "__main__":
    main()
