"""busmon's own cost as the work grows: tasks, threads, envelopes, and the dashboard.

Run by hand from the repository root (memory bus, no broker needed; ~3 minutes)::

    python -m bench.scaling [--repeat 3] [--parts tasks,threads,rss,audit,dashboard] [--json PATH]

1. **tasks** and **threads**: with 1,000 / 10,000 / 100,000 idle tasks on the arena loop (each
   blocked on its own ``asyncio.Event``), and separately 10 / 100 / 1,000 idle threads (blocked
   on a ``threading.Event``), all alive before the run's baseline, ``--repeat`` runs of each of:
   ``tests.leaky_buses:SlowExit`` (its flusher exits 300 ms after close, as in
   ``bench/probe_overhead.py``) and the memory bus (nothing left once close returns):
   - the verdict latency (``RunResult.verdict_ms``): SlowExit's last exit → verdict ready; for
     the memory bus, close → verdict ready;
   - a phase boundary's cost: every ``Census.take()`` call, and every ``busmon.probes.harness.runner.snapshot()``
     call less the census taken inside it;
   - a sampler tick (``Sampler.read``, 10 Hz), whose cost must not grow with the tasks;
   - the stall warnings and verdicts of those runs (busmon's own work must be neither).
2. **rss**: busmon's RSS (psutil, the sampler's readings) across a 1,000,000-envelope run on the
   memory bus (probes on, through ``Session`` as the command line plays it) at 0, 250k, 500k,
   750k and 1M envelopes published; with 100 keys, and with 10,000.
3. **audit**: the delivery audit's own memory (the deep size of what it holds, after in-order
   deliveries), 100 vs 10,000 keys and 10k vs 1M envelopes: bytes per key, and per envelope.
4. **dashboard**: the Textual app (off screen, 120x40, driven by Textual's Pilot) during a paced
   load, with 0 and 100,000 idle tasks on the arena loop: panel renders per second, samples
   reaching the UI per second and how late, and the time from pressing ``q`` mid-load to the
   banner saying it is quitting, and to the app having exited (the run closed, settled and
   judged, the arena stopped); each run in a fresh interpreter, as ``busmon`` runs.

``python -m bench.scaling live --idle-tasks 100000 -- [busmon arguments]`` runs the real
command line (``busmon …``) with that many idle tasks added on the arena loop before the first
baseline, to try it by hand in a terminal (tmux).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from bench.probe_overhead import LINGER  # the same lingering bus: verdict latency as that bench measures it
from bench.results_file import write_results

LOAD = """
name = "rss"
backend = "memory"
[probes]
interval_ms = 100
settle_timeout_s = 5
[defaults]
keys = {keys}
topics = 1
payload_bytes = 256
load_timeout_s = 300
[[runs]]
name = "load"
messages = {messages}
"""

DASHBOARD = """
name = "dashboard at scale"
backend = "memory"
[probes]
interval_ms = 100
settle_timeout_s = 5
[defaults]
keys = 100
topics = 2
publishers = 2
payload_bytes = 256
rate_per_s = {rate}
load_timeout_s = 120
[[runs]]
name = "load"
messages = {messages}
"""

TASK_POINTS = (1_000, 10_000, 100_000)
THREAD_POINTS = (10, 100, 1_000)
RSS_MARKS = (0, 250_000, 500_000, 750_000, 1_000_000)


# -- helpers -------------------------------------------------------------------------------


class Release:
    """Lets the idle tasks go. Each task waits on its own event: with one event shared by all,
    cancelling them in any order but their own (the arena's teardown, at quit, goes in set
    order) is quadratic in asyncio itself, each cancelled waiter being removed from the middle
    of the event's deque (measured once by hand: 100,000 took 21 s, 10,000 0.2 s).
    bench/probe_overhead.py's idle tasks share one event, but are released, never cancelled."""

    def __init__(self) -> None:
        self.events: list[asyncio.Event] = []

    def set(self) -> None:
        for e in self.events:
            e.set()


async def _idle_tasks(n: int, release: Release) -> list[asyncio.Task]:
    tasks = []
    for i in range(n):
        event = asyncio.Event()
        release.events.append(event)
        tasks.append(asyncio.create_task(event.wait(), name=f"bench.idle-{i}"))
    return tasks


def _idle_threads(n: int) -> tuple[list[threading.Thread], threading.Event]:
    release = threading.Event()
    threads = [threading.Thread(target=release.wait, name=f"bench.idle-thread-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads, release


def _ms(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "max": round(max(values), 3), "n": len(values)}


class Timings:
    """Times every call of ``busmon.probes.harness.runner.snapshot``, ``Census.take`` and a sampler's ``read``
    while installed (the originals are put back on exit)."""

    def __init__(self) -> None:
        self.snapshot: list[float] = []     # each snapshot() call, less a census taken inside it
        self.census: list[float] = []       # each Census.take() call, wherever
        self.sample: list[float] = []
        self._inner = 0.0                   # census time inside the snapshot() under way

    def __enter__(self) -> Timings:
        import busmon.probes.harness.runner as runner
        from busmon.probes.observe.census import Census

        self._runner, self._census_cls = runner, Census
        self._snapshot, self._take = runner.snapshot, Census.__dict__["take"]
        original_take = self._take.__func__

        def snapshot(*a: Any, **k: Any) -> Any:
            self._inner = 0.0
            t = time.perf_counter()
            try:
                return self._snapshot(*a, **k)
            finally:
                self.snapshot.append((time.perf_counter() - t) * 1000 - self._inner)

        def take(cls: type, *a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return original_take(cls, *a, **k)
            finally:
                ms = (time.perf_counter() - t) * 1000
                self.census.append(ms)
                self._inner += ms

        runner.snapshot = snapshot
        Census.take = classmethod(take)
        return self

    def watch_sampler(self, sampler: Any) -> None:
        read = sampler.read

        def timed() -> Any:
            t = time.perf_counter()
            try:
                return read()
            finally:
                self.sample.append((time.perf_counter() - t) * 1000)

        sampler.read = timed

    def __exit__(self, *exc: Any) -> None:
        self._runner.snapshot = self._snapshot
        self._census_cls.take = self._take


# -- 1. tasks and threads ------------------------------------------------------------------


def linger_run(idle_tasks: int = 0, idle_threads: int = 0, lingers: bool = True) -> dict[str, Any]:
    """One run with that many idle tasks (arena) and threads alive before its baseline: of
    SlowExit (its flusher exits 300 ms after close), or (``lingers=False``) of the memory bus,
    whose tasks have all exited when close returns."""
    from busmon.probes.harness.scenario import parse_scenario
    from busmon.probes.harness.session import Session

    sc = parse_scenario(LINGER if lingers else LOAD.format(keys=100, messages=1000), "linger.toml")
    threads, thread_release = _idle_threads(idle_threads)
    try:
        with Timings() as timings, Session(sc, lambda e: None) as session:
            timings.watch_sampler(session.sampler)
            release = Release()
            tasks = session.arena.run(_idle_tasks(idle_tasks, release))
            (run,) = session.play().runs
            session.arena.call_soon(release.set)
            session.arena.run(asyncio.wait(tasks) if tasks else asyncio.sleep(0))
            del tasks
    finally:
        thread_release.set()
        for t in threads:
            t.join(5)
    # the flusher is the one leftover, and it exits; anything else (a leak, a retained-memory
    # finding) is busmon misjudging the idle tasks or threads, and is reported
    if lingers:
        (left,) = [x for x in run.leftovers if x.state == "exited"]
    wrong = [f"{x.kind} {x.name} {x.state}" for x in run.leftovers if x.state != "exited"]
    wrong += [f"retained {x['type']} ({x['held_by']})" for x in run.retained()]
    return {"verdict": run.verdict, "misjudged": wrong, "verdict_ms": run.verdict_ms, "settle_ms": run.settle_ms,
            "memory_judge_ms": run.memory.get("judge_ms"), "snapshot_ms": timings.snapshot,
            "stalls": [(x["phase"], x["duration_ms"], x["blocking"]) for x in run.stalls],
            "census_ms": timings.census, "sample_ms": timings.sample}


def curve(kind: str, points: tuple[int, ...], repeat: int) -> list[dict[str, Any]]:
    rows = []
    for n in points:
        runs, clean = [], []
        for _ in range(repeat):
            idle = {"idle_tasks": n} if kind == "tasks" else {"idle_threads": n}
            runs.append(linger_run(**idle))
            gc.collect()
            clean.append(linger_run(**idle, lingers=False))
            gc.collect()
        runs_all = runs + clean
        row = {
            kind: n,
            "verdict_ms": _ms([r["verdict_ms"] for r in runs]),
            "verdict_ms_nothing_left": _ms([r["verdict_ms"] for r in clean]),
            "memory_judge_ms": _ms([r["memory_judge_ms"] for r in runs]),
            "snapshot_ms": _ms([x for r in runs_all for x in r["snapshot_ms"]]),
            "census_ms": _ms([x for r in runs_all for x in r["census_ms"]]),
            "sample_ms": _ms([x for r in runs_all for x in r["sample_ms"]]),
            "settle_ms": _ms([r["settle_ms"] for r in runs]),
            "stalls_per_run": _ms([len(r["stalls"]) for r in runs_all]),
            "stalls": [s for r in runs_all for s in r["stalls"]],
            "verdicts": [r["verdict"] for r in runs_all],
            "misjudged": sorted({m for r in runs_all for m in r["misjudged"]}),
        }
        rows.append(row)
        print(f"  {kind} {n:>7,}: verdict {row['verdict_ms']['median']:.1f}/{row['verdict_ms']['max']:.1f} ms, "
              f"nothing left {row['verdict_ms_nothing_left']['median']:.1f}/{row['verdict_ms_nothing_left']['max']:.1f} ms, "
              f"snapshot {row['snapshot_ms']['median']:.1f}/{row['snapshot_ms']['max']:.1f} ms, census "
              f"{row['census_ms']['median']:.1f}/{row['census_ms']['max']:.1f} ms, sampler tick "
              f"{row['sample_ms']['median']:.2f}/{row['sample_ms']['max']:.2f} ms, stalls {len(row['stalls'])}, verdicts {row['verdicts']} {row['misjudged'] or ''}", flush=True)
    return rows


# -- 2. RSS across a long run --------------------------------------------------------------


def rss_run(messages: int, keys: int = 100) -> dict[str, Any]:
    """RSS (MiB) as the sampler read it, at each mark of envelopes published, through a run."""
    from busmon.probes.model import PhaseSnapshot, Sample
    from busmon.probes.harness.scenario import parse_scenario
    from busmon.probes.harness.session import Session

    readings: list[tuple[int, int, float]] = []
    snaps: dict[str, float] = {}

    def sink(event: object) -> None:  # the arena thread: appends only
        if isinstance(event, Sample) and event.phase == "load":
            readings.append((event.published, event.delivered, event.rss_mb))
        elif isinstance(event, PhaseSnapshot):
            snaps[event.phase] = event.rss_mb

    sc = parse_scenario(LOAD.format(messages=messages, keys=keys), "rss.toml")
    with Session(sc, sink) as session:
        (run,) = session.play().runs
    assert run.verdict == "clean" and run.delivery["lost"] == 0, (run.verdict, run.retained())
    marks = {}
    for mark in RSS_MARKS:
        if mark == 0:
            marks["0"] = {"published": 0, "delivered": 0, "rss_mb": snaps["subscribe"]}
        elif mark >= messages:
            marks[str(mark)] = {"published": messages, "delivered": run.delivery["received"],
                                "rss_mb": snaps["load"]}
        else:
            at = next((r for r in readings if r[0] >= mark), None)
            if at is not None:
                marks[str(mark)] = {"published": at[0], "delivered": at[1], "rss_mb": at[2]}
    return {"messages": messages, "keys": keys, "deliver_per_s": run.throughput["deliver_per_s"],
            "marks": marks, "rss_by_phase": dict(snaps), "samples": len(readings)}


def in_child(part: str, *args: object) -> dict[str, Any]:
    """One measurement (``python -m bench.scaling PART-child ARGS``) in a fresh interpreter; its
    result is the JSON on the child's last line."""
    import json
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "bench.scaling", f"{part}-child", *map(str, args)],
                          capture_output=True, text=True, check=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rss_in_child(messages: int, keys: int) -> dict[str, Any]:
    """:func:`rss_run` in a fresh interpreter: a process's RSS keeps its high-water mark (memory
    freed is reused, rarely returned), so a run after another would hide its growth."""
    return in_child("rss", messages, keys)


# -- 3. the audit's own memory -------------------------------------------------------------


def audit_part() -> dict[str, Any]:
    out: dict[str, Any] = {"sizes": {}}
    for keys, envelopes in ((100, 10_000), (100, 1_000_000), (10_000, 100_000), (10_000, 1_000_000)):
        size = out["sizes"][f"{keys}x{envelopes}"] = deep_audit_bytes(keys, envelopes)
        print(f"  audit: {keys:>6,} keys, {envelopes:>9,} envelopes: {size['total']:,} bytes, of which per-key "
              f"state {size['per_key_state']:,}, latency histogram {size['histogram']:,} "
              f"({size['buckets']} buckets)", flush=True)
    sizes = out["sizes"]
    out["bytes_per_key"] = round((sizes["10000x1000000"]["per_key_state"] - sizes["100x1000000"]["per_key_state"])
                                 / (10_000 - 100), 1)
    out["per_key_state_bytes_per_envelope"] = round(
        (sizes["100x1000000"]["per_key_state"] - sizes["100x10000"]["per_key_state"]) / (1_000_000 - 10_000), 3)
    out["total_bytes_per_envelope"] = round(
        (sizes["100x1000000"]["total"] - sizes["100x10000"]["total"]) / (1_000_000 - 10_000), 3)
    return out


def deep_audit_bytes(keys: int, envelopes: int) -> dict[str, int]:
    """The audit's deep size (every container and number it holds, not the shared key strings),
    after ``envelopes`` in-order deliveries over ``keys`` keys, one consumer unit; and of that,
    its per-key state (what it knows of each key's sequence numbers) and its latency histogram."""
    from busmon.bus import Envelope
    from busmon.probes.harness.audit import DeliveryAudit

    names = [f"key-{k}" for k in range(keys)]
    audit = DeliveryAudit()
    handler = audit.handler(audit.unit("t"))
    audit.expect({"t": envelopes})
    seqs = [0] * keys
    for j in range(envelopes):
        k = j % keys
        seqs[k] += 1
        # sent 1 ms before it arrives, every one (the histogram's size is not what is measured)
        coro = handler(Envelope(key=names[k], type="t", payload=b"", seq=seqs[k], ts_ns=time.monotonic_ns() - 1_000_000))
        try:
            coro.send(None)
        except StopIteration:
            pass
    assert audit.received == envelopes and audit.duplicated == audit.reordered == 0
    shared = {id(n) for n in names}
    per_key = {name: value for name, value in vars(audit).items() if name in ("_seen", "_last")}
    return {"total": _deep_size(audit, shared), "per_key_state": _deep_size(per_key, shared) - sys.getsizeof(per_key),
            "histogram": _deep_size(audit.latency, shared), "buckets": len(audit.latency._buckets)}


def _deep_size(root: Any, skip: set[int]) -> int:
    """Bytes of ``root`` and what it holds (containers, numbers, strings), each object once;
    ``skip``: ids of objects owned elsewhere (the key strings, the handler's closures)."""
    seen = set(skip)
    stack = [root]
    total = 0
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, (type, asyncio.Event, Callable)) and o is not root:  # type: ignore[arg-type]
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif hasattr(o, "__dict__"):
            stack.append(vars(o))
        elif hasattr(o, "__slots__"):
            stack.extend(getattr(o, s) for s in o.__slots__ if hasattr(o, s))
    return total


# -- 4. the dashboard at 100,000 tasks -----------------------------------------------------


async def dashboard_run(idle: int, messages: int, rate: int, watch_s: float) -> dict[str, Any]:
    """The app off screen with ``idle`` idle tasks on the arena: renders, samples reaching the UI,
    and q (pressed during the load) to exit."""
    from busmon.probes.model import Sample
    from busmon.probes.harness.sampler import Sampler
    from busmon.probes.harness.scenario import parse_scenario
    from busmon.tui.app import BusmonApp
    from busmon.tui.controller import Controller
    from busmon.tui.widgets import PhaseChart
    from busmon.tui.widgets.throughput import Rates
    from busmon.tui.widgets.verdict import VerdictBanner

    renders: list[float] = []
    rates_renders: list[float] = []
    applied: list[tuple[float, float]] = []   # (when the UI applied a sample, how late it was)
    release = Release()
    idle_tasks: list[asyncio.Task] = []

    class IdleController(Controller):
        def start(self) -> None:  # the idle tasks are alive before the first baseline
            nonlocal idle_tasks
            self.session.start()
            idle_tasks = self.session.arena.run(_idle_tasks(idle, release))
            self._future = self.session.arena.submit(self._play(), name="busmon.session")

    # when each sample was taken, by the sampler's own clock reading (a sample's ``t_s`` is on its
    # run's clock, which restarts at each run's start: samples taken before it, applied after,
    # came out tens of milliseconds "early")
    taken: dict[int, tuple[Sample, float]] = {}
    sampler_read = Sampler.read

    def timed_read(self: Sampler) -> Sample:
        sample = sampler_read(self)
        taken[id(sample)] = (sample, time.monotonic())  # the sample held: its id stays its own
        return sample

    class CountedApp(BusmonApp):
        def _on_sample(self, s: Sample) -> None:
            now = time.monotonic()
            entry = taken.pop(id(s), None)
            if entry is not None and entry[0] is s:
                applied.append((now, now - entry[1]))
            super()._on_sample(s)

    chart_render, rates_render = PhaseChart.render, Rates.render

    def counted_chart(self: PhaseChart) -> Any:
        if self.id == "chart-tasks":
            renders.append(time.monotonic())
        return chart_render(self)

    def counted_rates(self: Rates) -> Any:
        rates_renders.append(time.monotonic())
        return rates_render(self)

    banner_waiting = VerdictBanner.waiting
    quitting_shown: list[float] = []

    def counted_waiting(self: VerdictBanner, text: str) -> None:
        if text.startswith("quitting"):
            quitting_shown.append(time.monotonic())
        banner_waiting(self, text)

    VerdictBanner.waiting = counted_waiting  # type: ignore[method-assign]
    Sampler.read = timed_read  # type: ignore[method-assign]
    sc = parse_scenario(DASHBOARD.format(messages=messages, rate=rate), "dashboard.toml")
    controller = IdleController(sc, interactive=False)
    session = controller.session
    app = CountedApp(controller)
    PhaseChart.render, Rates.render = counted_chart, counted_rates  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            deadline = loop.time() + 120
            while not (session.state.phase == "load" and session.state.published > 0):
                assert loop.time() < deadline, "the load did not start"
                await pilot.pause(0.05)
            start = time.monotonic()
            n_renders, n_rates, n_applied = len(renders), len(rates_renders), len(applied)
            until = loop.time() + watch_s
            while loop.time() < until:  # the window frames are counted in (a measuring window)
                await pilot.pause(0.05)
            window = time.monotonic() - start
            phase_at_q = session.state.phase
            in_window = applied[n_applied:]
            gaps = [b[0] - a[0] for a, b in zip(in_window, in_window[1:])]
            t_q = time.monotonic()
            await pilot.press("q")
            deadline = loop.time() + 60
            while app.is_running:
                assert loop.time() < deadline, "q did not quit within 60 s"
                await asyncio.sleep(0.005)
            q_exit_s = time.monotonic() - t_q
            # the app's answer: its banner said it was quitting (pressing a key through the pilot
            # returns only once the app is idle, so this is timed where the banner is told)
            q_answer_s = quitting_shown[0] - t_q if quitting_shown else float("nan")
    finally:
        PhaseChart.render, Rates.render = chart_render, rates_render  # type: ignore[method-assign]
        VerdictBanner.waiting = banner_waiting  # type: ignore[method-assign]
        Sampler.read = sampler_read  # type: ignore[method-assign]
        controller.shutdown()
    results = controller.session.results
    return {
        "idle_tasks": idle, "window_s": round(window, 3), "phase_when_q": phase_at_q,
        "chart_renders_per_s": round((len(renders) - n_renders) / window, 2),
        "numbers_renders_per_s": round((len(rates_renders) - n_rates) / window, 2),
        "samples_applied_per_s": round(len(in_window) / window, 2),
        "sample_gap_ms_max": round(1000 * max(gaps), 1) if gaps else None,
        "sample_late_ms": _ms([1000 * late for _, late in in_window]) if in_window else None,
        "sample_late": [round(1000 * late, 3) for _, late in in_window],
        "q_to_exit_ms": round(1000 * q_exit_s, 1),
        "q_answered_ms": round(1000 * q_answer_s, 1),
        "exit_code": app.return_code,
        "run_verdict": results[0].verdict if results else None,
        "run_failure": (results[0].failure or {}).get("kind") if results else None,
        "verdict_ms_of_interrupted_run": results[0].verdict_ms if results else None,
    }


def dashboard_in_child(idle: int, watch_s: float) -> dict[str, Any]:
    """:func:`dashboard_run` in a fresh interpreter, as ``busmon`` runs: one after another in one
    process, each run found the heap its predecessors left (the third quit 36 % slower than the first)."""
    return in_child("dashboard", idle, watch_s)


def dashboard_part(idle_points: tuple[int, ...], repeat: int, watch_s: float) -> list[dict[str, Any]]:
    rows = []
    for idle in idle_points:
        runs = []
        for _ in range(repeat):
            r = dashboard_in_child(idle, watch_s)
            runs.append(r)
            print(f"  dashboard, {idle:,} idle tasks: charts drawn {r['chart_renders_per_s']:.1f}/s, numbers "
                  f"{r['numbers_renders_per_s']:.1f}/s, samples reaching the UI {r['samples_applied_per_s']:.1f}/s "
                  f"(late median {r['sample_late_ms']['median'] if r['sample_late_ms'] else '-'} ms, "
                  f"gap max {r['sample_gap_ms_max']} ms), q answered {r['q_answered_ms']:.0f} ms, "
                  f"→ exit {r['q_to_exit_ms']:.0f} ms", flush=True)
        rows.append({
            "idle_tasks": idle,
            "chart_renders_per_s": _ms([r["chart_renders_per_s"] for r in runs]),
            "numbers_renders_per_s": _ms([r["numbers_renders_per_s"] for r in runs]),
            "samples_applied_per_s": _ms([r["samples_applied_per_s"] for r in runs]),
            "sample_late_ms": _ms([x for r in runs for x in r["sample_late"]]),
            "sample_gap_ms_max": max(r["sample_gap_ms_max"] or 0 for r in runs),
            "q_to_exit_ms": _ms([r["q_to_exit_ms"] for r in runs]),
            "q_answered_ms": _ms([r["q_answered_ms"] for r in runs]),
            "runs": runs,
        })
    return rows


# -- the real command line, by hand --------------------------------------------------------


def live(idle: int, argv: list[str]) -> None:
    """``busmon ARGS`` with ``idle`` idle tasks on the arena loop before the first baseline."""
    from busmon.probes.harness.session import Session

    setup = Session._setup

    async def with_idle(self: Session) -> None:
        await setup(self)
        release = Release()
        self._bench_idle = (release, await _idle_tasks(idle, release))  # type: ignore[attr-defined]

    Session._setup = with_idle  # type: ignore[method-assign]
    from busmon.tui.cli import main as busmon

    sys.argv = ["busmon", *argv]
    busmon()


# -- the tables ----------------------------------------------------------------------------


def _cell(d: dict[str, float] | None, fmt: str = "{:.1f}") -> str:
    return "–" if not d else f"{fmt.format(d['median'])} / {fmt.format(d['max'])}"


def print_tables(out: dict[str, Any]) -> None:
    console = Console(width=None if sys.stdout.isatty() else 132)  # a log keeps whole headers
    for kind in ("tasks", "threads"):
        if kind not in out:
            continue
        t = Table(title=f"idle {kind} alive before the baseline: median / max ms (verdicts: {out['repeat']} runs "
                        f"each; scans and ticks: every call in all {2 * out['repeat']} runs)")
        for col in (f"idle {kind}", "last exit → verdict (a task exits 300 ms after close)",
                    "close → verdict (nothing left)", "Census.take()", "snapshot() less its census",
                    "sampler tick", "stall warnings (all runs)", "verdicts"):
            t.add_column(col, justify="right")
        for r in out[kind]:
            verdicts = ", ".join(f"{v} {r['verdicts'].count(v)}" for v in sorted(set(r["verdicts"])))
            t.add_row(f"{r[kind]:,}", _cell(r["verdict_ms"]), _cell(r["verdict_ms_nothing_left"]), _cell(r["census_ms"]),
                      _cell(r["snapshot_ms"]), _cell(r["sample_ms"], "{:.2f}"), str(len(r["stalls"])),
                      verdicts + (f" ({'; '.join(r['misjudged'])})" if r["misjudged"] else ""))
        console.print(t)
    if "rss" in out:
        for r in out["rss"]:
            t = Table(title=f"busmon's RSS across {r['messages']:,} envelopes (memory bus, {r['keys']:,} keys, probes "
                            f"on, {r['deliver_per_s']:,.0f} deliveries/s)")
            for col in ("envelopes published", "delivered", "RSS MiB", "Δ from 0"):
                t.add_column(col, justify="right")
            base = r["marks"]["0"]["rss_mb"]
            for m in r["marks"].values():
                t.add_row(f"{m['published']:,}", f"{m['delivered']:,}", f"{m['rss_mb']:.1f}",
                          f"{m['rss_mb'] - base:+.1f}")
            console.print(t)
    if "audit" in out:
        a = out["audit"]
        t = Table(title="the delivery audit's own memory (deep size after in-order deliveries, one consumer unit)")
        for col in ("keys", "envelopes", "audit bytes", "per-key state bytes", "latency histogram bytes"):
            t.add_column(col, justify="right")
        for k, v in a["sizes"].items():
            keys, envs = k.split("x")
            t.add_row(f"{int(keys):,}", f"{int(envs):,}", f"{v['total']:,}", f"{v['per_key_state']:,}",
                      f"{v['histogram']:,}")
        console.print(t)
        console.print(f"per key: {a['bytes_per_key']:,.1f} bytes (100 vs 10,000 keys, 1M envelopes); per envelope, "
                      f"100 keys, 10k → 1M: per-key state {a['per_key_state_bytes_per_envelope']:,.3f} bytes, "
                      f"whole audit {a['total_bytes_per_envelope']:,.3f} bytes")
    if "dashboard" in out:
        t = Table(title=f"the dashboard (off screen, 120x40) during a paced load: median / max of {out['repeat']} "
                        f"runs (sample lateness: every sample)")
        for col in ("idle tasks", "tasks chart drawn /s", "numbers drawn /s", "samples reaching the UI /s",
                    "sample late ms", "longest gap between samples ms", "q (mid-load) → banner says quitting ms",
                    "q → app exited ms"):
            t.add_column(col, justify="right")
        for r in out["dashboard"]:
            t.add_row(f"{r['idle_tasks']:,}", _cell(r["chart_renders_per_s"]), _cell(r["numbers_renders_per_s"]),
                      _cell(r["samples_applied_per_s"]), _cell(r["sample_late_ms"]), f"{r['sample_gap_ms_max']:.0f}",
                      _cell(r["q_answered_ms"], "{:.0f}"), _cell(r["q_to_exit_ms"], "{:.0f}"))
        console.print(t)


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    children = {"dashboard-child": lambda idle, watch_s: asyncio.run(dashboard_run(
                    int(idle), messages=200_000, rate=20_000, watch_s=float(watch_s))),
                "rss-child": lambda messages, keys: rss_run(int(messages), int(keys))}
    if len(sys.argv) > 1 and sys.argv[1] in children:  # one measurement for in_child()
        import json

        print(json.dumps(children[sys.argv[1]](*sys.argv[2:])))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "live":
        p = argparse.ArgumentParser(prog="python -m bench.scaling live")
        p.add_argument("--idle-tasks", type=int, default=100_000)
        p.add_argument("busmon_args", nargs=argparse.REMAINDER)
        a = p.parse_args(sys.argv[2:])
        args = a.busmon_args[1:] if a.busmon_args[:1] == ["--"] else a.busmon_args
        live(a.idle_tasks, args)
        return
    parser = argparse.ArgumentParser(
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description=__doc__.splitlines()[0],
        epilog="Also: python -m bench.scaling live [--idle-tasks N] -- play SCENARIO ...  runs the real "
               "busmon command with N idle tasks on the arena (to try the dashboard by hand). "
               "Run from the repository root; see docs/BENCHMARKS.md section 5.")
    parser.add_argument("--repeat", type=int, default=3, help="runs per point")
    parser.add_argument("--parts", default="tasks,threads,rss,audit,dashboard",
                        help="comma-separated, any of: tasks,threads,rss,audit,dashboard (see docs/BENCHMARKS.md section 5)")
    parser.add_argument("--messages", type=int, default=1_000_000, help="envelopes of the RSS run")
    parser.add_argument("--task-points", default=",".join(map(str, TASK_POINTS)), help="idle task counts, comma-separated")
    parser.add_argument("--thread-points", default=",".join(map(str, THREAD_POINTS)), help="idle thread counts, comma-separated")
    parser.add_argument("--dashboard-idle", default="0,100000", help="idle task counts for the dashboard part, comma-separated")
    parser.add_argument("--watch-s", type=float, default=3.0, help="how long the dashboard is watched during load")
    parser.add_argument("--json", type=Path, default=Path("bench/results/scaling.json"),
                        help="where to write the results")
    a = parser.parse_args()
    parts = set(a.parts.split(","))
    out: dict[str, Any] = {"repeat": a.repeat}
    started = time.monotonic()
    if "tasks" in parts:
        out["tasks"] = curve("tasks", tuple(int(x) for x in a.task_points.split(",")), a.repeat)
    if "threads" in parts:
        out["threads"] = curve("threads", tuple(int(x) for x in a.thread_points.split(",")), a.repeat)
    if "rss" in parts:
        out["rss"] = [rss_in_child(a.messages, keys) for keys in (100, 10_000)]
        for r in out["rss"]:
            print(f"  rss, {r['keys']:,} keys: " + ", ".join(f"{m['published']:,} → {m['rss_mb']:.1f} MiB"
                                                          for m in r["marks"].values()), flush=True)
    if "audit" in parts:
        out["audit"] = audit_part()
    if "dashboard" in parts:
        points = tuple(int(x) for x in a.dashboard_idle.split(","))
        out["dashboard"] = dashboard_part(points, a.repeat, a.watch_s)
    out["bench_s"] = round(time.monotonic() - started, 1)
    print_tables(out)
    write_results(a.json, out)


if __name__ == "__main__":
    main()
