"""A recorded run, written out as the arena would emit it: fixed values, fixed clocks.

Feeds the SVG snapshot tests, so the pictures depend on the layout only.
"""

from __future__ import annotations

from busmon.probes.model import Leftover, PhaseSnapshot, PhaseStarted, RunResult, Sample

BASE = {"busmon.sampler": 1, "busmon.session": 1}
LOADED = {"bus.pool": 256, "busmon.publisher": 2, **BASE}


def sample(phase: str, t: float, tasks: int, pub: float, dlv: float, delivered: int,
           expected: int = 20000, components=None) -> Sample:
    return Sample(run="run-1", phase=phase, t_s=t, tasks=tasks, threads=4, os_threads=4,
                  by_component=components or BASE, published=delivered, delivered=delivered,
                  expected=expected, publish_per_s=pub, deliver_per_s=dlv,
                  latency_ms={"p50": 0.12, "p90": 0.4, "p99": 1.05, "max": 3.2},
                  rss_mb=58.0, cpu_percent=31.0, open_fds=10, sockets=2 if phase == "load" else 0,
                  loop_lag_ms={"p50_ms": 0.1, "p99_ms": 0.9, "max_ms": 3.1}, stalls=1 if phase == "load" else 0)


def snap(phase: str, t: float, tasks: int, new: int, components, sockets: int = 0) -> PhaseSnapshot:
    return PhaseSnapshot(phase, t, tasks, 4, 4, components, new, 0, sockets, 12, 0, 58.0,
                         {"p50_ms": 0.1, "p99_ms": 0.9, "max_ms": 3.1})


LEFTOVERS = (
    Leftover("task", "bus.leaky.heartbeat", "bus.leaky.heartbeat", "leaked", None,
             ("tests/leaky_buses.py:42 in _forever", "asyncio/locks.py:213 in wait", "awaiting FutureIter"),
             None, "_forever"),
    Leftover("socket", "tcp → 127.0.0.1:9092", "aiokafka", "leaked", None, (),
             "aiokafka/conn.py:216 in connect", "fd 14, local 127.0.0.1:50412, ESTABLISHED"),
    Leftover("thread", "asyncio_0", "thread:asyncio.executor", "ignored", None, (), None,
             "ident 1, native 2 (runtime: asyncio default executor (lives until the loop shuts down))"),
    Leftover("task", "bus.sloppy.worker-0", "bus.sloppy", "exited", 81.4, ("tests/leaky_buses.py:98",),
             None, "_worker_with_slow_cleanup"),
)


def events(until: str = "verdict") -> list[object]:
    """baseline → create → subscribe → load → close → settle (→ verdict)."""
    out: list[object] = [PhaseStarted("run-1", "baseline", 0.0), snap("baseline", 0.01, 2, 0, BASE)]
    out += [sample("baseline", 0.1, 2, 0, 0, 0), PhaseStarted("run-1", "create", 0.5)]
    out += [snap("create", 0.52, 258, 256, {"bus.pool": 256, **BASE}), PhaseStarted("run-1", "subscribe", 1.0)]
    out += [snap("subscribe", 1.01, 258, 256, {"bus.pool": 256, **BASE}), PhaseStarted("run-1", "load", 1.5)]
    for i in range(40):
        out.append(sample("load", 1.5 + i * 0.1, 260, 5000, 4990, min(20000, 500 * (i + 1)), components=LOADED))
    if until == "load":
        return out
    out += [snap("load", 5.5, 258, 256, {"bus.pool": 256, **BASE}, 2), PhaseStarted("run-1", "close", 6.0)]
    out += [snap("close", 6.01, 5, 3, {"bus.leaky.heartbeat": 1, "bus.sloppy": 1, **BASE}, 1),
            PhaseStarted("run-1", "settle", 6.5)]
    for i in range(5):
        out.append(sample("settle", 6.5 + i * 0.1, 3, 0, 0, 20000))
    out.append(snap("settle", 7.0, 3, 1, {"bus.leaky.heartbeat": 1, **BASE}, 1))
    if until == "settle":
        return out
    from busmon.probes.model import RunFinished

    phases = tuple(e for e in out if isinstance(e, PhaseSnapshot))
    result = RunResult(
        name="run-1", backend="tests.leaky_buses:TaskLeaker", verdict="leaked", phases=phases,
        settle_ms=1000.0, leftovers=LEFTOVERS,
        delivery={"sent": 20000, "received": 20000, "lost": 0, "duplicated": 0, "reordered": 0,
                  "published": 20000},
        throughput={"publish_per_s": 5000.0, "deliver_per_s": 4990.0, "load_s": 4.0,
                    "latency_ms": {"p50": 0.12, "p90": 0.4, "p99": 1.05, "max": 3.2}},
        stalls=({"phase": "load", "started_at": 3.2, "duration_ms": 251.0, "component": "tests",
                 "blocking": "tests/leaky_buses.py:471 in _block: time.sleep(seconds)",
                 "stack": ["tests/leaky_buses.py:459 in blocking", "tests/leaky_buses.py:471 in _block"]},),
        memory={"rss_mb": {"baseline": 52.0, "settle": 58.0}, "rss_drift_mb": 6.0, "retained": [
            {"type": "bus.envelope.Envelope", "count": 20000, "size_bytes": 2_400_000, "per_envelope": 1.0,
             "held_by": "tests.leaky_buses.Hoarder.sent (list of 20,000)", "allocated_at": None}]},
    )
    out.append(RunFinished(result))
    return out
