"""The retained-memory probe on simulated runs: baseline (collect, freeze, start) → create →
mark → load → settle (collect) → judge → unfreeze.

Every window unfreezes in ``finally``: a frozen generation left behind would skew every later
test's GC.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import pytest

from busmon.probes.verdict.retained import MemoryVerdict, RetainedProbe, TypeCount


@dataclass
class Env:
    """Envelope-like: the fields a bus keeps per message."""

    key: str
    payload: bytes
    seq: int


def envelope(i: int) -> Env:
    return Env(f"key-{i}", b"p" * 64 + i.to_bytes(4, "big"), 10_000 + i)


class HoardingBus:
    """Keeps every envelope it ever published (an outbox never pruned)."""

    def __init__(self) -> None:
        self.sent: list[Env] = []

    def publish(self, env: Env) -> None:
        self.sent.append(env)


class PassingBus:
    """A pool of 256 workers with their queues, made at create; envelopes go through."""

    def __init__(self) -> None:
        self.workers = [Worker(i) for i in range(256)]
        self.delivered = 0

    def publish(self, env: Env) -> None:
        w = self.workers[env.seq % 256]
        w.queue.append(env)
        w.queue.pop()
        self.delivered += 1


class Worker:
    def __init__(self, i: int) -> None:
        self.name = f"worker-{i}"
        self.queue: list[Env] = []
        self.buffer = bytearray(512)


class BoundedCache:
    """An LRU of at most ``bound`` entries, filled lazily during load."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.entries: OrderedDict[str, Env] = OrderedDict()

    def put(self, env: Env) -> None:
        self.entries[env.key] = env
        self.entries.move_to_end(env.key)
        while len(self.entries) > self.bound:
            self.entries.popitem(last=False)


class DedupeBus:
    """Remembers every message id it saw, to drop duplicates, and never forgets one."""

    def __init__(self) -> None:
        self.seen: dict[str, bool] = {}


class Record:
    """Stands for one of busmon's own records (audit entries, samples), not busmon's type."""

    def __init__(self, i: int) -> None:
        self.values = [i, f"r{i}"]


#: a module-level hoard made before any run (so frozen at the baseline)
HOARD: list[Env] = []


@contextmanager
def window(**options) -> Iterator[RetainedProbe]:
    """The run's baseline: everything alive now is frozen; always unfrozen again."""
    gc.collect()
    gc.freeze()
    probe = RetainedProbe(**options)
    try:
        probe.start()
        yield probe
    finally:
        gc.unfreeze()
        probe.finish()


def judge(probe: RetainedProbe, envelopes: int, **kw) -> MemoryVerdict:
    gc.collect()  # settle's collection
    return probe.judge(envelopes, **kw)


def row(verdict: MemoryVerdict, name: str) -> TypeCount | None:
    return next((t for t in verdict.types if t.type == name), None)


# -- what fires ---------------------------------------------------------------------------

def test_a_bus_keeping_every_envelope_fires_once_for_the_envelope_type_naming_the_list():
    with window() as probe:
        bus = HoardingBus()
        probe.mark()
        for i in range(2000):
            bus.publish(envelope(i))
        verdict = judge(probe, 2000)
        assert gc.get_freeze_count() > 0  # the holder was in sight: judge left the GC as it was
    (finding,) = verdict.findings  # the payloads and keys fold into the envelopes: one finding
    assert finding.type == f"{__name__}.Env" and finding.count == 2000
    assert finding.per_envelope == pytest.approx(1.0)
    assert finding.held_by == f"{__name__}.HoardingBus.sent (list of 2,000)"
    assert finding.allocated_at is None and verdict.top_sites == () and not verdict.traced
    # the envelope row's size includes what only it holds: its key, payload and seq
    one = Env("key-0", b"p" * 68, 10_000)
    assert finding.size_bytes >= 2000 * (len(one.payload) + len(one.key) + 33)
    bus_row = row(verdict, f"{__name__}.HoardingBus")
    assert bus_row is not None and bus_row.count == 1 and bus_row.growth == 0
    assert bus_row.size_bytes > 2000 * 8  # its list (the bus's own part) folds into it
    # the hoard's list and payloads fold into their rows (a stray object of another thread may not)
    assert all(r is None or r.count < 10 for r in (row(verdict, "list"), row(verdict, "bytes")))


@pytest.fixture
def hoard() -> Iterator[list[Env]]:
    """The module-level list (made before any baseline), empty before and after the test."""
    HOARD.clear()
    yield HOARD
    HOARD.clear()


def test_a_module_level_list_made_before_the_baseline_still_fires_and_names_the_global(hoard):
    # the list is frozen with the baseline; the envelopes appended during the run are not
    with window() as probe:
        probe.mark()
        for i in range(2000):
            hoard.append(envelope(i))
        verdict = judge(probe, 2000)
        assert gc.get_freeze_count() == 0  # judge unfroze to find the holder
    (finding,) = verdict.findings
    assert finding.count == 2000 and finding.per_envelope == pytest.approx(1.0)
    assert finding.held_by == f"module {__name__}: HOARD (list of 2,000)"


def test_without_resolve_outside_the_holder_is_named_after_the_callers_unfreeze(hoard):
    with window() as probe:
        probe.mark()
        for i in range(500):
            hoard.append(envelope(i))
        verdict = judge(probe, 500, resolve_outside=False)
        assert gc.get_freeze_count() > 0 and verdict.unresolved == 1
        assert verdict.findings[0].held_by == ""
        gc.unfreeze()
        verdict = probe.resolve(verdict)
    assert verdict.unresolved == 0
    assert verdict.findings[0].held_by == f"module {__name__}: HOARD (list of 500)"


def test_payloads_kept_in_a_list_are_a_bytes_row_of_their_own():
    """Untracked objects (bytes, str, int) are counted when only what the run made holds them:
    the items of a large collection are rows; a record's fields fold into the record."""
    with window() as probe:
        bus = HoardingBus()
        probe.mark()
        for i in range(2000):
            bus.sent.append(b"x" * 100 + i.to_bytes(4, "big"))  # type: ignore[arg-type]
        verdict = judge(probe, 2000)
    (finding,) = verdict.findings
    assert (finding.type, finding.count) == ("bytes", 2000)
    assert finding.size_bytes == 2000 * len(b"x" * 104) + 2000 * 33  # bytes' header: 33 bytes
    assert finding.held_by == f"{__name__}.HoardingBus.sent (list of 2,000)"


def test_a_dedupe_dict_of_ids_that_is_never_pruned_shows_its_keys():
    # a dict of str -> True holds only atomic values: the GC does not even track it, it is
    # found as what the bus holds
    with window() as probe:
        bus = DedupeBus()
        probe.mark()
        for i in range(1000):
            bus.seen[f"msg-{i:06d}"] = True
        verdict = judge(probe, 1000)
    (finding,) = verdict.findings
    assert (finding.type, finding.count) == ("str", 1000)
    assert finding.held_by == f"{__name__}.DedupeBus.seen (dict of 1,000)"


def test_a_shared_payload_is_not_the_runs_retained_memory():
    payload = b"s" * 1000  # held by this frame too: not only by the envelopes
    with window() as probe:
        bus = HoardingBus()
        probe.mark()
        for i in range(1000):
            bus.publish(Env("k", payload, i))  # seq < 1000 beside 10_000+: small ints are shared
        verdict = judge(probe, 1000)
    (finding,) = verdict.findings
    assert finding.type.endswith(".Env")
    assert finding.size_bytes < 1000 * 200  # no 1,000 × 1 KB payload in it


def test_a_closure_and_a_class_attribute_and_a_coroutine_local_are_named():
    class Registry:
        ALL: list[Env] = []

    def make_sink():
        kept: list[Env] = []

        def sink(env: Env) -> None:
            kept.append(env)
        return sink

    with window() as probe:
        sink = make_sink()
        probe.mark()
        for i in range(300):
            sink(envelope(i))
        verdict = judge(probe, 300)
    assert verdict.findings[0].held_by == (
        f"{__name__}.test_a_closure_and_a_class_attribute_and_a_coroutine_local_are_named"
        ".<locals>.make_sink.<locals>.sink (closure variable 'kept', list of 300)")

    with window() as probe:
        probe.mark()
        for i in range(300):
            Registry.ALL.append(envelope(i))
        verdict = judge(probe, 300)
    Registry.ALL.clear()
    assert verdict.findings[0].held_by.endswith("Registry.ALL (class attribute, list of 300)")


async def test_a_task_that_buffers_everything_in_a_local_is_named_by_its_coroutine():
    async def consumer(inbox: asyncio.Queue) -> None:
        buf: list[Env] = []
        while True:
            buf.append(await inbox.get())
            inbox.task_done()

    with window() as probe:
        inbox: asyncio.Queue = asyncio.Queue()
        task = asyncio.create_task(consumer(inbox))
        probe.mark()
        for i in range(400):
            inbox.put_nowait(envelope(i))
        async with asyncio.timeout(10):
            await inbox.join()  # every envelope is in the consumer's buffer
        verdict = judge(probe, 400)
        task.cancel()
    (finding,) = [f for f in verdict.findings if f.type.endswith(".Env")]
    assert finding.held_by.startswith(f"{__name__}.") and "consumer" in finding.held_by
    assert finding.held_by.endswith("(coroutine local 'buf', list of 400)")
    with pytest.raises(asyncio.CancelledError):
        await task


def test_an_objects_own_parts_fold_into_its_row():
    """A materialised __dict__, a tuple and a small list only the record holds: parts of it."""

    class Order:
        def __init__(self, i: int) -> None:
            self.lines = [f"line-{i}-{n}" for n in range(3)]   # a small list of its own
            self.route = (f"from-{i}", [i])                   # a tracked tuple of its own
            self.meta = {"id": f"order-{i}"}                   # an atomic dict: untracked

    with window() as probe:
        bus = HoardingBus()
        probe.mark()
        for i in range(500):
            order = Order(i)
            vars(order)  # materialise its __dict__: a dict object of its own from now on
            bus.sent.append(order)  # type: ignore[arg-type]
        verdict = judge(probe, 500)
    (finding,) = verdict.findings
    assert finding.type.endswith("Order") and finding.count == 500
    for part in ("dict", "tuple", "list", "str"):  # [i] is the tuple's, the tuple the order's
        assert (row(verdict, part) or TypeCount(part, 0, 0, 0)).count < 10, part  # (the class's own)
    assert finding.size_bytes > 500 * (3 * 50 + 100)  # its lines, route, meta and __dict__


async def test_a_queue_nobody_reads_is_named_by_whose_queue_it_is():
    class QueueBus:
        def __init__(self) -> None:
            self.outbox: asyncio.Queue[Env] = asyncio.Queue()

    with window() as probe:
        bus = QueueBus()
        probe.mark()
        for i in range(500):
            bus.outbox.put_nowait(envelope(i))
        verdict = judge(probe, 500)
    (finding,) = verdict.findings
    assert finding.held_by.endswith(
        "QueueBus.outbox (asyncio.queues.Queue._queue → collections.deque of 500)")


# -- what does not fire -------------------------------------------------------------------

def test_a_pool_made_before_mark_with_envelopes_flowing_through_does_not_fire():
    with window() as probe:
        bus = PassingBus()
        probe.mark()
        for i in range(2000):
            bus.publish(envelope(i))
        verdict = judge(probe, 2000)
    assert verdict.findings == ()
    workers = row(verdict, f"{__name__}.Worker")
    assert workers is not None and (workers.count, workers.growth) == (256, 0)


def test_a_bounded_cache_filled_during_load_fires_on_one_measurement_but_not_with_a_checkpoint():
    """300 entries made lazily during load, 500 envelopes: growth 300 ≥ min_count (100) and ≥
    0.5 × 500. One measurement cannot tell that from a leak; a checkpoint during load can: the
    cache no longer grows after it."""

    def play(checkpoint: bool) -> MemoryVerdict:
        with window() as probe:
            cache = BoundedCache(300)
            probe.mark()
            for i in range(500):
                cache.put(envelope(i))
                if checkpoint and i + 1 == 350:
                    probe.checkpoint(350)
            return judge(probe, 500)

    assert [f.type for f in play(checkpoint=False).findings] == [f"{__name__}.Env"]  # the limitation
    assert play(checkpoint=True).findings == ()


def test_a_checkpoint_keeps_a_real_leak_firing():
    with window() as probe:
        bus = HoardingBus()
        probe.mark()
        for i in range(2000):
            bus.publish(envelope(i))
            if i + 1 == 1000:
                probe.checkpoint(1000)
        verdict = judge(probe, 2000)
    (finding,) = verdict.findings
    assert finding.per_envelope == pytest.approx(1.0)


def test_below_min_count_or_the_per_envelope_rate_nothing_fires():
    with window() as probe:
        bus = HoardingBus()
        probe.mark()
        for i in range(99):
            bus.publish(envelope(i))
        verdict = judge(probe, 99)
    assert verdict.findings == ()  # 99 < min_count
    with window() as probe:
        bus = HoardingBus()
        probe.mark()
        for i in range(400):
            bus.publish(envelope(i))
        verdict = judge(probe, 1000)
    assert verdict.findings == ()  # 0.4 per envelope < 0.5
    with window() as probe:
        bus = HoardingBus()
        probe.mark()
        for i in range(400):
            bus.publish(envelope(i))
        verdict = judge(probe, 0)
    assert verdict.findings == () and row(verdict, f"{__name__}.Env").count == 400  # no envelopes: no finding


def test_objects_reachable_from_exclude_roots_never_count():
    records_before: list[Record] = []  # made before the baseline, like busmon's audit: frozen
    with window() as probe:
        own: dict[str, list[Record]] = {"records": []}
        probe.mark()
        for i in range(5000):
            own["records"].append(Record(i))
            records_before.append(Record(i))
        verdict = judge(probe, 5000, exclude_roots=[own, records_before])
    assert verdict.findings == ()
    assert row(verdict, f"{__name__}.Record") is None
    # none of the 20,000 records' lists, strings or ints (a stray object of another thread may be)
    assert all(r is None or r.count < 10 for r in (row(verdict, t) for t in ("list", "str", "int")))
    assert verdict.excluded >= 2 * 5000 * 2  # the records and their lists
    assert verdict.objects < 50


def test_a_busmon_record_that_refers_to_the_bus_hides_nothing_when_the_bus_is_protected():
    with window() as probe:
        bus = HoardingBus()
        context = {"bus": bus, "events": []}  # like a RunContext handed over as a root
        probe.mark()
        for i in range(500):
            bus.publish(envelope(i))
        hidden = judge(probe, 500, exclude_roots=[context])
    assert hidden.findings == ()  # everything the bus holds was reached from the root
    with window() as probe:
        bus = HoardingBus()
        context = {"bus": bus, "events": []}
        probe.mark()
        for i in range(500):
            bus.publish(envelope(i))
        verdict = judge(probe, 500, exclude_roots=[context], protect=[bus])
    (finding,) = verdict.findings
    assert finding.count == 500 and "HoardingBus.sent" in finding.held_by


def test_roots_given_to_mark_are_remembered():
    with window() as probe:
        own: list[Record] = []
        probe.mark(exclude_roots=[own])
        for i in range(1000):
            own.append(Record(i))
        verdict = judge(probe, 1000)
    assert verdict.findings == () and row(verdict, f"{__name__}.Record") is None


def test_busmon_s_own_types_are_not_judged():
    with window() as probe:
        probe.mark()
        mine = [TypeCount(f"t{i}", i, 0, 0) for i in range(3000)]
        verdict = judge(probe, 3000)
    assert verdict.findings == () and len(mine) == 3000
    assert not any(t.type.startswith("probes.") for t in verdict.types)


def test_ignore_types_silences_a_finding_by_full_or_bare_name():
    for pattern in ("Env", f"{__name__}.E*"):
        with window(ignore_types=(pattern,)) as probe:
            bus = HoardingBus()
            probe.mark()
            for i in range(500):
                bus.publish(envelope(i))
            verdict = judge(probe, 500)
        assert verdict.findings == (), pattern
        assert row(verdict, f"{__name__}.Env").count == 500  # still shown among the types


def test_growth_is_counted_from_the_mark_and_never_negative():
    with window() as probe:
        early = [envelope(i) for i in range(1000)]
        probe.mark()
        del early[600:]
        bus = HoardingBus()
        for i in range(300):
            bus.publish(envelope(i))
        verdict = judge(probe, 300)
    env = row(verdict, f"{__name__}.Env")
    assert (env.count, env.growth) == (900, 0)
    assert verdict.findings == ()


# -- tracing ------------------------------------------------------------------------------

def test_tracing_names_where_the_retained_objects_were_allocated():
    was_tracing = tracemalloc.is_tracing()
    with window(trace=True) as probe:
        bus = HoardingBus()
        probe.mark()
        for i in range(1000):
            bus.publish(envelope(i))
        verdict = judge(probe, 1000)
    (finding,) = verdict.findings
    assert verdict.traced
    assert finding.allocated_at is not None
    assert finding.allocated_at.startswith("tests/test_retained_probe.py:")
    assert finding.allocated_at.endswith(" in envelope")  # Env(...) in envelope()
    line = int(finding.allocated_at.split(":")[1].split()[0])
    assert line == envelope.__code__.co_firstlineno + 1
    sites = [s for s, _, _ in verdict.top_sites]
    assert sites and sites[0] == finding.allocated_at
    assert not any(s.startswith(("probes/", "tui/")) for s in sites)
    assert tracemalloc.is_tracing() == was_tracing  # stopped again: the probe started it


def test_without_tracing_there_is_no_site():
    with window(trace=False) as probe:
        bus = HoardingBus()
        probe.mark()
        for i in range(500):
            bus.publish(envelope(i))
        verdict = judge(probe, 500)
    assert verdict.findings[0].allocated_at is None and verdict.top_sites == () and not verdict.traced


# -- the contract -------------------------------------------------------------------------

def test_as_dict_has_the_findings_under_retained():
    with window() as probe:
        bus = HoardingBus()
        probe.mark()
        for i in range(200):
            bus.publish(envelope(i))
        verdict = judge(probe, 200)
    d = verdict.as_dict()
    assert set(d) >= {"types", "retained", "objects", "size_bytes", "traced", "judge_ms", "top_sites"}
    (f,) = d["retained"]
    assert set(f) == {"type", "count", "size_bytes", "per_envelope", "held_by", "allocated_at"}
    assert f["count"] == 200 and f["per_envelope"] == 1.0
    assert {"type", "count", "size_bytes", "growth"} == set(d["types"][0])


def test_judge_runs_once_per_run():
    with window() as probe:
        probe.mark()
        judge(probe, 0)
        with pytest.raises(RuntimeError):
            judge(probe, 0)


def test_nothing_frozen_at_start_falls_back_to_the_ids_alive_then():
    gc.collect()
    probe = RetainedProbe()
    probe.start()  # no gc.freeze(): the baseline is remembered by identity
    try:
        bus = HoardingBus()
        probe.mark()
        for i in range(300):
            bus.publish(envelope(i))
        verdict = judge(probe, 300)
    finally:
        probe.finish()
    (finding,) = verdict.findings
    assert finding.count == 300 and finding.held_by == f"{__name__}.HoardingBus.sent (list of 300)"


async def test_ten_thousand_live_tasks_made_before_the_baseline_cost_nothing():
    tasks = [asyncio.create_task(asyncio.sleep(3600)) for _ in range(10_000)]
    await asyncio.sleep(0)
    try:
        with window() as probe:
            probe.mark()
            t0 = time.perf_counter()
            verdict = judge(probe, 1000)
            elapsed_ms = (time.perf_counter() - t0) * 1000
        assert verdict.findings == () and verdict.objects < 50
        assert elapsed_ms < 200  # ~0.1 ms measured: the frozen tasks are never looked at
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def test_module_caches_of_the_runtime_and_of_busmon_are_not_the_bus():
    from busmon.probes.verdict.retained import runtime_cache

    assert runtime_cache("module linecache: cache (dict of 2 → tuple of 4 → list of 1,668)") == "linecache"
    assert runtime_cache("module html: _html5 (dict of 2,231)") == "html"
    assert runtime_cache("module rich._emoji_codes: EMOJI (dict of 3,600)") == "rich._emoji_codes"
    assert runtime_cache("module mylib.cache: SEEN (list of 2,000)") is None
    assert runtime_cache("tests.leaky_buses.Hoarder.sent (list of 2,000)") is None
    assert runtime_cache("") is None


def test_a_module_imported_during_the_run_is_not_retained_memory():
    """A library that imports part of itself on first use makes hundreds of objects during the
    first run, after the half-load checkpoint: once, never growing with the envelopes (FastStream's
    stop() importing anyio's asyncio backend did, ~460 functions)."""
    from busmon.probes.harness.scenario import parse_scenario
    from busmon.probes.harness.session import Session

    sc = parse_scenario("""
name = "lazy import"
backend = "tests.leaky_buses:LazyImporter"
[defaults]
keys = 10
[[runs]]
name = "first"
messages = 500
""")
    with Session(sc, lambda e: None) as session:
        result = session.play()
    run = result.runs[0]
    assert run.retained() == [], run.retained()
    assert run.verdict == "clean", [x for x in run.leftovers if x.state == "leaked"]
