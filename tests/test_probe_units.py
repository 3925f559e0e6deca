"""The probes' small parts: histogram, attribution, incremental counts, identity census."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import textwrap

import pytest

from busmon.probes.observe.census import Census
from busmon.probes.observe.components import name_component, task_component
from busmon.probes.observe.histogram import LatencyHistogram
from busmon.probes.observe.tracking import TaskTracker


def test_histogram_percentiles_are_within_one_percent():
    rng = random.Random(1)
    values = sorted(int(rng.lognormvariate(13, 1.2)) for _ in range(50_000))
    h = LatencyHistogram()
    for v in values:
        h.record(v)
    for q in (50, 90, 99):
        exact = values[int(q / 100 * len(values)) - 1]
        assert abs(h.percentile_ns(q) - exact) / exact < 0.01, q
    assert h.max_ns == values[-1] and h.count == len(values)
    assert set(h.summary_ms()) == {"p50", "p90", "p99", "max"}


@pytest.mark.parametrize("name, component", [
    ("bus.pool.worker-17", "bus.pool"),
    ("bus.kafka.consumer:orders", "bus.kafka.consumer"),
    ("bus.nats-js.consumer:t-1", "bus.nats-js.consumer"),
    ("busmon.publisher-3", "busmon.publisher"),
    ("busmon.sampler", "busmon.sampler"),
])
def test_name_components(name, component):
    assert name_component(name) == component


async def test_unnamed_tasks_are_attributed_to_their_coroutines_package():
    async def mine() -> None:
        await asyncio.Event().wait()

    t = asyncio.create_task(mine())
    e = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)
    assert task_component(t) == "tests"          # this test module's package
    assert task_component(e) == "asyncio"
    for x in (t, e):
        x.cancel()
    await asyncio.wait([t, e])


async def test_tracker_counts_live_tasks_per_component_incrementally():
    loop = asyncio.get_running_loop()
    tracker = TaskTracker(trace_creation=True)
    tracker.install(loop)
    try:
        release = asyncio.Event()
        workers = [asyncio.create_task(release.wait(), name=f"bus.pool.worker-{i}") for i in range(5)]
        other = asyncio.create_task(release.wait(), name="bus.kafka.consumer:orders")
        counts = tracker.counts()
        assert counts["bus.pool"] == 5 and counts["bus.kafka.consumer"] == 1
        assert "test_probe_units.py" in tracker.sites[other]
        release.set()
        await asyncio.wait(workers + [other])
        counts = tracker.counts()
        assert "bus.pool" not in counts and "bus.kafka.consumer" not in counts
        assert tracker.created >= 6 and tracker.finished >= 6
    finally:
        tracker.uninstall()
    assert loop.get_task_factory() is None


async def test_a_bare_asyncio_coroutine_is_attributed_to_the_package_that_created_it():
    tracker = TaskTracker()
    tracker.install(asyncio.get_running_loop())
    try:
        release = asyncio.Event()
        waiter = asyncio.ensure_future(release.wait())  # asyncio's own coroutine, created here
        assert tracker.component_of(waiter) == "tests"
        assert tracker.counts().get("tests", 0) >= 1
        release.set()
        await waiter
    finally:
        tracker.uninstall()


async def test_census_is_by_identity_not_count():
    release = asyncio.Event()
    old = asyncio.create_task(release.wait(), name="x")
    base = Census.take()
    old.cancel()
    await asyncio.wait([old])
    new = asyncio.create_task(release.wait(), name="x")
    now = Census.take()
    assert len(now.tasks) == len(base.tasks)
    tasks, _, _ = now.new_since(base)
    assert tasks == [new]
    new.cancel()
    await asyncio.wait([new])


def test_headless_playback_imports_no_textual(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text('[[runs]]\nname = "r"\nmessages = 100\n')
    code = textwrap.dedent(f"""
        import sys
        from busmon.tui.cli import main
        sys.argv = ["busmon", "play", {str(scenario)!r}, "--headless"]
        try:
            main()
        except SystemExit as e:
            assert e.code == 0, e.code
        assert "textual" not in sys.modules, "headless playback imported Textual"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


async def test_the_task_tracker_keeps_what_is_alive_not_what_was_ever_created() -> None:
    """busmon run with nobody attached never asks for the counts: a service creating tasks all
    day must not make the tracker grow (it did: one weak reference per task ever created)."""
    from busmon.probes.observe.tracking import FRESH_COMPACT_AT, TaskTracker

    tracker = TaskTracker(trace_creation=True)
    tracker.install(asyncio.get_running_loop(), count_existing=False)
    try:
        for _ in range(5):
            await asyncio.gather(*(asyncio.create_task(asyncio.sleep(0)) for _ in range(FRESH_COMPACT_AT)))
        assert tracker.created >= 5 * FRESH_COMPACT_AT
        assert len(tracker._fresh) <= FRESH_COMPACT_AT + 1
        assert len(tracker._live) == 0
    finally:
        tracker.uninstall()


def test_thread_births_forget_threads_that_ended(monkeypatch) -> None:
    import threading

    from busmon.probes.observe import thread_births

    monkeypatch.setattr(thread_births, "PRUNE_AT", 16)
    births = thread_births.ThreadBirths()
    births._prune_at = 16
    births.install()
    try:
        for _ in range(200):
            t = threading.Thread(target=lambda: None)
            t.start()
            t.join()
        assert len(births.native_ids) <= 32
    finally:
        births.uninstall()
