"""busmon's own records stay bounded and its shortcuts say what the long way said, as the work
grows (bench/scaling.py measures the costs; these hold the behaviour, without timing)."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref

import psutil
from hypothesis import given, settings
from hypothesis import strategies as st

from busmon.bus import Envelope
from busmon.probes.harness.audit import DeliveryAudit
from busmon.probes.observe.census import Census, components_of_tasks, os_thread_ids
from busmon.probes.harness.scenario import parse_scenario
from busmon.probes.harness.session import Session
from busmon.probes.observe.tracking import TaskTracker


def deliver(audit: DeliveryAudit, handler, key: str, seq: int) -> None:
    coro = handler(Envelope(key=key, type="t", payload=b"", seq=seq, ts_ns=1))
    try:
        coro.send(None)  # the handler never awaits
    except StopIteration:
        pass


def reference_counts(deliveries: list[tuple[str, int]]) -> tuple[int, int, int]:
    """received, duplicated, reordered as the audit counted them when it kept every number seen."""
    seen: dict[str, set[int]] = {}
    last: dict[str, int] = {}
    received = duplicated = reordered = 0
    for key, seq in deliveries:
        seqs = seen.setdefault(key, set())
        if seq in seqs:
            duplicated += 1
            continue
        seqs.add(seq)
        if seq < last.get(key, 0):
            reordered += 1
        else:
            last[key] = seq
        received += 1
    return received, duplicated, reordered


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(min_value=0, max_value=40)), max_size=80))
def test_the_audit_counts_duplicates_and_reordering_as_when_it_kept_every_number(deliveries):
    audit = DeliveryAudit()
    handler = audit.handler(audit.unit("t"))
    for key, seq in deliveries:
        deliver(audit, handler, key, seq)
    assert (audit.received, audit.duplicated, audit.reordered) == reference_counts(deliveries)
    for runs in audit._seen.values():  # sorted runs, never touching: the state is as small as it can be
        assert len(runs) % 2 == 0
        assert all(runs[i] <= runs[i + 1] for i in range(0, len(runs), 2))
        assert all(runs[i] >= runs[i - 1] + 2 for i in range(2, len(runs), 2))


def audit_state(envelopes: int, keys: int = 100, skip: int | None = None) -> DeliveryAudit:
    audit = DeliveryAudit()
    handler = audit.handler(audit.unit("t"))
    names = [f"key-{k}" for k in range(keys)]
    seqs = [0] * keys
    for j in range(envelopes):
        k = j % keys
        seqs[k] += 1
        if j != skip:
            deliver(audit, handler, names[k], seqs[k])
    return audit


def test_the_audit_keeps_per_key_state_whatever_the_number_of_envelopes():
    small, large = audit_state(10_000), audit_state(1_000_000)
    assert large.received == 1_000_000 and large.duplicated == large.reordered == 0
    assert len(large._seen) == len(small._seen) == 100
    assert sum(map(len, large._seen.values())) == sum(map(len, small._seen.values())) == 200
    # a loss is one more run for its key, not a number kept per envelope after it
    lossy = audit_state(1_000_000, skip=500)
    assert sum(map(len, lossy._seen.values())) == 202


async def test_a_snapshots_component_counts_are_those_of_asking_each_task():
    loop = asyncio.get_running_loop()
    tracker = TaskTracker()
    tracker.install(loop)
    release = asyncio.Event()
    try:
        named = [asyncio.create_task(release.wait(), name=f"bus.pool.worker-{i}") for i in range(30)]
        bare = [asyncio.ensure_future(release.wait()) for _ in range(5)]          # attributed to their creator
        outside = asyncio.Task(release.wait(), loop=loop, name="lib.direct")     # never through the factory
        tracker.counts()
        unclassified = asyncio.create_task(release.wait(), name="bus.late")      # created since the last counts()
        doomed = asyncio.create_task(release.wait(), name="bus.doomed")
        census = Census.take()
        doomed.cancel()
        await asyncio.wait([doomed])  # finished, its done-callbacks run: no longer the tracker's
        await asyncio.sleep(0)
        del doomed
        gc.collect()            # and collected: its reference in the census is dead
        alive, counts = tracker.count_components(census.task_refs)
        expected = components_of_tasks(census.tasks, tracker.component_of)
        assert alive == len(census.tasks) and counts == expected
        assert counts["bus.pool"] == 30 and counts["lib.direct"] == 1 and counts["bus.late"] == 1
        assert "bus.doomed" not in counts
    finally:
        release.set()
        tracker.uninstall()
    await asyncio.wait([*named, *bare, outside, unclassified])


async def test_an_uninstalled_tracker_lets_go_of_the_tasks_it_watched():
    loop = asyncio.get_running_loop()
    tracker = TaskTracker()
    tracker.install(loop)
    release = asyncio.Event()
    task = asyncio.create_task(release.wait(), name="bus.idle")
    tracker.counts()
    tracker.uninstall()
    assert loop.get_task_factory() is None
    finished = tracker.finished
    release.set()
    await task
    await asyncio.sleep(0)  # the done-callbacks its end scheduled have run (a tracker's would have)
    assert tracker.finished == finished and tracker.counts() == {}
    ref = weakref.ref(task)
    del task
    gc.collect()
    assert ref() is None and not tracker.destroyed


def test_os_thread_ids_are_the_threads_psutil_lists():
    release = threading.Event()
    threads = [threading.Thread(target=release.wait, daemon=True) for _ in range(20)]
    for t in threads:
        t.start()
    try:
        for _ in range(5):  # a thread of the test runner's may start or end between the two looks
            ids, listed = os_thread_ids(), {t.id for t in psutil.Process().threads()}
            if ids == listed:
                break
        assert ids == listed and {t.native_id for t in threads} <= ids
    finally:
        release.set()
        for t in threads:
            t.join()


RUN = """
name = "many idle threads"
backend = "memory"
[probes]
settle_timeout_s = 2
[[runs]]
name = "short"
messages = 200
"""


def test_many_idle_threads_from_before_the_baseline_are_no_finding():
    """busmon's own reading of the OS threads (an int each) was still held while memory was
    judged: with 300 threads and 200 envelopes, 'retained int' made the run leaked."""
    release = threading.Event()
    threads = [threading.Thread(target=release.wait, name=f"idle-{i}", daemon=True) for i in range(300)]
    for t in threads:
        t.start()
    try:
        with Session(parse_scenario(RUN, "threads.toml"), lambda e: None) as session:
            (run,) = session.play().runs
    finally:
        release.set()
        for t in threads:
            t.join()
    assert run.verdict == "clean", (run.retained(), [x for x in run.leftovers if x.state != "exited"])


def test_the_arena_cancels_what_is_left_and_leaves_the_collector_as_it_found_it():
    with Session(parse_scenario(RUN, "arena.toml"), lambda e: None) as session:
        release = asyncio.Event()

        async def idle() -> list[asyncio.Task]:
            return [asyncio.create_task(release.wait(), name=f"idle-{i}") for i in range(50)]

        tasks = session.arena.run(idle())
    assert all(t.cancelled() for t in tasks)
    assert session.arena.refused == []
    assert gc.get_freeze_count() == 0 and gc.isenabled()
