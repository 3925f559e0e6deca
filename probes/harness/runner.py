"""The phase runner: drives one bus through baseline → create → subscribe → load → hold →
close → settle on the arena loop, and measures it the right way.

Each run gets a fresh bus and its own baseline. The naive count (taken the
instant ``close()`` returns, as the post-mortem's test did) is recorded beside
the settled one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import linecache
import re
import socket
import sys
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from busmon.bus import Envelope, EventBus, create_bus
from busmon.bus.base import DEFAULT_CLOSE_TIMEOUT_S, DEFAULT_DRAIN_TIMEOUT_S
from busmon.bus.factory import is_import_path, preload
from busmon.bus.errors import BusConfigError, BusRefusedError
from busmon.bus.secrets import redact_options, redact_url, scrub
from busmon.bus.deadline import CallTimeout, LibraryCancelled, bounded, cancel_and_wait, innermost, task_stack
from busmon.bus.health import broker_addresses, check_broker
from busmon.probes.harness.audit import DeliveryAudit
from busmon.probes.observe.census import Census, components_of_threads, os_thread_count
from busmon.probes.harness.gate import AutoGate
from busmon.probes.observe.fds import UNSUPPORTED_NOTE
from busmon.probes.model import FailureNoted, PhaseSnapshot, PhaseStarted, RunResult
from busmon.probes.observe.process import rss_mb
from busmon.probes.verdict.resources import Attribution, ResourceWatch, brokers_of
from busmon.probes.verdict.retained import RetainedProbe
from busmon.probes.harness.sampler import LiveState
from busmon.probes.harness.scenario import ProbeSpec, RunSpec, Scenario
from busmon.probes.verdict.ignore import IgnoreRules
from busmon.probes.verdict.settle import SettleWatch
from busmon.probes.observe.stacks import stack_component
from busmon.probes.observe.tracking import TaskTracker

#: how long the broker check after a failure may take, per address
BROKER_CHECK_S = 1.0


class PhaseFailed(Exception):
    """A phase failed: its deadline passed, the bus raised, or the bus reported a fault."""

    def __init__(self, message: str, *, kind: str = "error", deadline_s: float | None = None,
                 stack: list[str] | None = None) -> None:
        super().__init__(message)
        self.kind = kind                  # deadline | error | fault | interrupted | refused | config
        self.deadline_s = deadline_s
        self.stack = list(stack or [])


@dataclass
class Instruments:
    """The session's probes beyond tasks and threads, shared by its runs (all optional: with
    probes off, none is installed)."""

    loopwatch: Any = None            # busmon.probes.observe.loopwatch.LoopWatch on the arena loop
    sockets: Any = None              # busmon.probes.observe.fds.SocketOwners
    processes: Any = None            # busmon.probes.observe.children.ProcessOwners
    #: busmon's own long-lived records (e.g. the dashboard app): never judged as retained memory
    roots: list[Any] = field(default_factory=list)
    #: a front end running in another thread (the dashboard) parks itself while memory is judged:
    #: a screenshot half drawn is hundreds of strings alive at that moment, busmon's not the bus's
    park_front_end: Callable[[], contextlib.AbstractContextManager] | None = None

    def front_end_parked(self) -> contextlib.AbstractContextManager:
        return self.park_front_end() if self.park_front_end is not None else contextlib.nullcontext()

    def own_work(self) -> contextlib.AbstractContextManager:
        """busmon's own blocking work (GC, full scans): a stall during it is not the bus's."""
        return self.loopwatch.own_work() if self.loopwatch is not None else contextlib.nullcontext()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "run"


class RunContext:
    """Everything one run needs, and the tasks it starts itself (never the bus's leftovers)."""

    def __init__(self, scenario: Scenario, spec: RunSpec, tracker: TaskTracker, state: LiveState,
                 sink: Callable[[object], None], gate: Any = None,
                 first_baseline: Census | None = None, instruments: Instruments | None = None,
                 first_rss_mb: float | None = None) -> None:
        self.scenario = scenario
        self.spec = spec
        self.tracker = tracker
        self.state = state
        self.sink = sink
        self.gate = gate or AutoGate()
        self.first_baseline = first_baseline
        self.instruments = instruments or Instruments()
        self.first_rss_mb = first_rss_mb   # the first run's baseline RSS: drift across runs
        self.brokers: dict[str, str] = {}  # broker ip:port → backend, to attribute sockets
        self.retained: RetainedProbe | None = None
        self.own: weakref.WeakSet[asyncio.Task] = weakref.WeakSet()
        self.bus: EventBus | None = None
        self.baseline: Census | None = None
        self.phases: list[PhaseSnapshot] = []
        self.audit = DeliveryAudit()
        self.published: dict[str, int] = {}
        self.subscriptions: list[Any] = []
        self.topics: list[str] = []
        self.scopes_left = 0
        self.scopes_over = asyncio.Event()
        self.load_started = self.load_ended = self.delivered_at = 0.0
        #: tasks running a bus call that ignored cancellation: judged, not excluded as busmon's own
        self.stuck: dict[asyncio.Task, str] = {}
        self.broker_status: str | None = None
        self.close_problem: str | None = None
        self.broker_down = False  # every broker address refused or stayed silent after the failure
        self.failure: PhaseFailed | None = None
        self.interrupted = False
        self.closing = False
        self.baseline_at: float | None = None  # close and settle have begun: an interruption lets them finish
        #: this run's own tag, in its topic names and (``group_per_run``) its consumer group's
        self.tag = uuid.uuid4().hex[:6]
        #: the modules imported when the run's baseline was taken (see ``busmon_roots``)
        self.modules_before: frozenset[str] = frozenset()

    def abandon(self, task: asyncio.Task, what: str) -> None:
        """A task running the bus's code would not stop: it is the bus's leftover now."""
        self.stuck[task] = what
        self.own.discard(task)


async def run_once(ctx: RunContext) -> RunResult:
    """Play one run; a failing bus is reported (verdict ``failed``) and still closed and settled."""
    try:
        return await _run_once(ctx)
    finally:
        gc.unfreeze()  # settle does this; this covers a run cancelled part-way


async def _run_once(ctx: RunContext) -> RunResult:
    spec, st, probes = ctx.spec, ctx.state, ctx.scenario.probes
    inst = ctx.instruments
    loopwatch = inst.loopwatch
    st.run, st.t0, st.published, st.audit, st.peaks = spec.name, time.monotonic(), 0, ctx.audit, {}
    st.counters = None
    error: str | None = None
    closed_at = time.monotonic()
    at_close: Census | None = None

    async def phase(name: str) -> None:
        if ctx.failure is None and not ctx.interrupted:  # after a failure, close and settle at once
            await ctx.gate.before(spec.name, name)
        st.phase = name
        if loopwatch is not None:
            loopwatch.set_phase(name)
        ctx.sink(PhaseStarted(spec.name, name, st.elapsed()))

    with inst.own_work():
        preload(ctx.scenario.url)             # a first import is not the bus blocking its loop
    ctx.brokers = await resolve_brokers(ctx)  # before the baseline: a DNS lookup is not the bus's
    await phase("baseline")
    with inst.own_work():
        gc.collect()
        ctx.baseline = Census.take()
        # Everything alive now is the baseline (the census itself too: 10,000 weak references
        # for 10,000 idle tasks are not the run's): move it out of the GC's reach until settle,
        # so the GC after close scans only what the run created (a full collection costs ~13 ms
        # with 10,000 idle baseline tasks otherwise), and what is left then is what the run
        # created. settle() unfreezes them.
        gc.freeze()
    ctx.baseline_at = time.monotonic()
    ctx.modules_before = frozenset(sys.modules)
    st.base_fds, st.baseline_at = ctx.baseline.fds, ctx.baseline_at
    if loopwatch is not None:
        loopwatch.reset()
    ctx.retained = RetainedProbe(trace=probes.trace_memory, ignore_types=tuple(probes.ignore_types))
    ctx.retained.start(frozen=True)  # frozen above
    snapshot(ctx, "baseline", ctx.baseline)
    deadlines = ctx.scenario.deadlines
    try:
        await phase("create")
        await create(ctx)
        snapshot(ctx, "create")
        await phase("subscribe")
        await subscribe(ctx)
        snapshot(ctx, "subscribe")
        with inst.own_work():
            ctx.retained.mark(exclude_roots=busmon_roots(ctx))  # the bus's fixed state, before any load
        await phase("load")
        await load(ctx)
        snapshot(ctx, "load")
        if spec.hold_s > 0:
            await phase("hold")
            await hold(ctx)
            snapshot(ctx, "hold")
    except asyncio.CancelledError:
        if not ctx.interrupted:
            raise
        _uncancel()
        ctx.failure = PhaseFailed("interrupted (Ctrl-C or quit)", kind="interrupted")
    except Exception as exc:  # the bus or broker failed: say so, then still close and settle
        ctx.failure = exc if isinstance(exc, PhaseFailed) else PhaseFailed(describe_error(exc), kind=(
            "refused" if isinstance(exc, BusRefusedError)
            # the factory could not make a bus (it returned something else): every run would fail
            # the same way, so it is the configuration's error, not the run's
            else "config" if isinstance(exc, BusConfigError) and ctx.bus is None else "error"))
    failed_in = st.phase
    if ctx.failure is not None and ctx.load_started:
        # a load cut short: its rates are what got through until then, not zeros
        now = asyncio.get_running_loop().time()
        ctx.load_ended = ctx.load_ended or now
        ctx.delivered_at = ctx.delivered_at or now
    if ctx.failure is not None and not any(p.phase == failed_in for p in ctx.phases):
        snapshot(ctx, failed_in)  # the phase that failed keeps its row in the tables
    if ctx.failure is not None:
        error = scrub(await failure_line(ctx, failed_in, ctx.failure))
        ctx.sink(FailureNoted(spec.name, failed_in, error, ctx.failure.kind))
    close_failure: PhaseFailed | None = None
    ctx.closing = True
    try:
        await phase("close")
        if ctx.bus is not None:
            close_failure = await close(ctx, deadlines.close_s)
    finally:
        closed_at = time.monotonic()
        with inst.own_work():  # full scans, busmon's: never a stall of the bus's
            created = ctx.tracker.created if ctx.tracker.installed else None
            at_close = Census.take()
            resources = ResourceWatch(ctx.baseline.fds, ctx.baseline.children,
                                      Attribution(inst.sockets, inst.processes, ctx.brokers))
            # watch exits from now on, even while the settle phase waits for its key press
            watch = SettleWatch(ctx.baseline, at_close, closed_at, timeout_s=probes.settle_timeout_s,
                                poll_ms=probes.settle_poll_ms, exclude=ctx.own, sites=ctx.tracker.sites,
                                stuck=dict(ctx.stuck), tracker=ctx.tracker, since=ctx.baseline_at,
                                resources=resources, rules=ignore_rules(probes), created_at_close=created)
        ctx.own.add(watch.start())
        snapshot(ctx, "close", at_close)  # the naive count, right after close returned
        at_close = None  # a weak reference per live task: let it go before memory is judged
    if close_failure is not None and ctx.failure is None:
        ctx.failure, failed_in = close_failure, "close"
        error = scrub(await failure_line(ctx, "close", close_failure))
        ctx.sink(FailureNoted(spec.name, "close", error, close_failure.kind))
    elif close_failure is not None:
        ctx.close_problem = scrub(str(close_failure))  # after an earlier failure: reported beside it

    await phase("settle")
    memory: dict[str, Any] = {}

    def judge_memory() -> None:  # after settle's GC, while only what the run created is in reach
        roots = [*busmon_roots(ctx), watch, resources]
        with ctx.instruments.front_end_parked():
            memory.update(ctx.retained.judge(st.published, exclude_roots=roots, protect=[ctx.bus]).as_dict())

    outcome = await watch.verdict(ignore_rules(probes), judge=judge_memory, own_work=inst.own_work)
    ctx.retained.finish()
    snapshot(ctx, "settle", outcome.final)
    # tracemalloc slows every allocation several-fold: the loop's lag is then busmon's doing
    # as much as the bus's, so stalls are not judged while it traces
    stalls = loopwatch.stalls_since(ctx.baseline_at) if loopwatch is not None and not probes.trace_memory else []
    memory = memory_summary(ctx, memory)

    leaked = any(x.state in ("leaked", "destroyed") for x in outcome.leftovers) or bool(memory.get("retained"))
    if not error and probes.fail_on_stall_ms and (worst := max(stalls, key=lambda x: x.duration_ms, default=None)):
        if worst.duration_ms >= probes.fail_on_stall_ms:
            failed_in = worst.phase
            ctx.failure = PhaseFailed(stall_line(worst, probes.fail_on_stall_ms), kind="stall",
                                      stack=list(worst.stack))
            error = f"{worst.phase}: {ctx.failure}"
    # a run cut short by Ctrl-C or q is "interrupted" (what it found is still listed), not "failed"
    verdict = (("interrupted" if ctx.failure is not None and ctx.failure.kind == "interrupted" else "failed")
               if error else ("leaked" if leaked else "clean"))
    assert outcome.final is not None
    t, th, _ = outcome.final.new_since(ctx.first_baseline or ctx.baseline)
    drift = {"tasks": len([x for x in t if x not in ctx.own]), "threads": len(th)}
    failure = None
    if ctx.failure is not None:
        f = ctx.failure
        failure = {"phase": failed_in, "kind": f.kind, "message": scrub(str(f)), "deadline_s": f.deadline_s,
                   "stack": list(f.stack), "component": stack_component(f.stack) if f.stack else None,
                   "broker": ctx.broker_status, "broker_down": ctx.broker_down, "close": ctx.close_problem}
    result = RunResult(
        name=spec.name, backend=ctx.scenario.backend, target=redact_url(ctx.scenario.url),
        options=redact_options(bus_options(ctx.scenario)), verdict=verdict, phases=tuple(ctx.phases),
        settle_ms=round(outcome.settle_ms, 2), leftovers=outcome.leftovers,
        delivery=ctx.audit.counts(ctx.published).as_dict() | {"published": st.published},
        throughput=throughput(ctx), error=error, drift=drift,
        peaks={p: dict(v) for p, v in st.peaks.items()},
        counters=dict(getattr(getattr(ctx.bus, "counters", None), "snapshot", dict)()),
        verdict_ms=round(outcome.verdict_ms, 2), failure=failure, paused_ms=round(outcome.paused_ms, 2),
        stalls=tuple(x.as_dict() for x in stalls), memory=memory,
        notes=run_notes(ctx),
    )
    return result


def _uncancel() -> None:
    """Forget a cancellation that was handled (an interruption turned into a failed run)."""
    task = asyncio.current_task()
    if task is not None:
        while task.cancelling():
            task.uncancel()


async def failure_line(ctx: RunContext, phase: str, failure: PhaseFailed) -> str:
    """One line: the broker and what happened to it, where in the run, and the error.

    ``kafka 127.0.0.1:9092 unreachable (connection refused) during load at 41 %: …``;
    when the broker answers (or there is none) only where and what.
    """
    where = phase
    if phase == "load" and ctx.audit.expected:
        # what was published (a bus may hold published envelopes undelivered): said as such
        where = f"load at {100 * ctx.state.published // max(1, ctx.spec.messages)} % published"
    ctx.broker_status = None
    if failure.kind not in ("interrupted", "refused"):  # a refusal is the broker's answer: it is up
        try:
            health = await check_broker(ctx.scenario.url, BROKER_CHECK_S,
                                        tls=bool(getattr(ctx.bus, "uses_tls", False)))
        except Exception:  # the look is a courtesy; the failure is what matters
            health = []
        down = [h for h in health if h.down]
        ctx.broker_down = bool(down) and len(down) == len(health)
        if down:
            ctx.broker_status = "; ".join(h.describe() for h in down)
            return f"{ctx.broker_status} during {where}: {failure}"
        if health:
            ctx.broker_status = "; ".join(h.describe() for h in health)
    return f"{where}: {failure}"


def describe_error(exc: BaseException) -> str:
    """An exception as one line fit to show: a bus's or a library's message can carry a secret."""
    text = str(exc) or type(exc).__name__
    return scrub(text if type(exc).__name__ in text or ":" in text else f"{type(exc).__name__}: {text}")


def snapshot(ctx: RunContext, name: str, census: Census | None = None) -> PhaseSnapshot:
    # a full scan is busmon's own blocking work (with 100,000 idle tasks, ~80 ms with its
    # census): never a stall of the bus's
    with ctx.instruments.own_work():
        snap = _snapshot(ctx, name, census)
    ctx.phases.append(snap)
    # short phases may fall between samples
    ctx.state.note_peak(name, snap.tasks, snap.threads, snap.os_threads)
    ctx.sink(snap)
    return snap


def _snapshot(ctx: RunContext, name: str, census: Census | None) -> PhaseSnapshot:
    census = census or Census.take()
    # busmon's own tasks of this run, held strongly for a moment: a plain set is asked at C
    # speed, a WeakSet makes a weak reference per question (one per task alive)
    own = set(ctx.own)
    own_refs = {weakref.ref(t) for t in own}
    if ctx.tracker.installed:
        ctx.tracker.counts()  # classify new tasks now, at the boundary, not during the next phase
    tasks, by_task = ctx.tracker.count_components(census.task_refs - own_refs)
    by_component = dict(sorted(by_task.items(), key=lambda kv: (-kv[1], kv[0])))
    by_component.update(components_of_threads(census.threads))
    new_tasks = new_threads = 0
    if ctx.baseline is not None:
        nt, nth, _ = census.new_since(ctx.baseline)
        new_tasks = len([t for t in nt if t not in own])
        new_threads = len(nth)
    sockets = processes = 0
    if ctx.baseline is not None:
        sockets = census.new_sockets(ctx.baseline)
        processes = len(census.children - ctx.baseline.children)
    lw = ctx.instruments.loopwatch
    return PhaseSnapshot(name, ctx.state.elapsed(), tasks, len(census.threads),
                         os_thread_count(), by_component, new_tasks, new_threads, sockets,
                         len(census.fds or ()), processes, rss_mb(),
                         lw.lag(name) if lw is not None else {})


def topics_for(ctx: RunContext) -> list[str]:
    stem = f"busmon-{_slug(ctx.spec.name)}-{ctx.tag}"
    return [f"{stem}-{i}" for i in range(ctx.spec.topics)]


def group_for(ctx: RunContext) -> str | None:
    """The run's consumer group: the scenario's name with the run's tag (``billing-3f9a2c``), so
    no run joins a group an earlier run left behind on the broker; as written when
    ``group_per_run = false``."""
    spec = ctx.spec.subscribe
    if spec.group is None or not spec.group_per_run:
        return spec.group
    return f"{spec.group}-{ctx.tag}"


async def call(ctx: RunContext, awaitable: Any, deadline_s: float, what: str) -> Any:
    """One call into the bus under a deadline: on expiry the run fails with the stuck stack, and
    a call that ignores its cancellation is left behind as the bus's leftover."""
    try:
        return await bounded(awaitable, deadline_s, what, name="busmon.call")
    except CallTimeout as exc:
        if exc.abandoned is not None:
            ctx.abandon(exc.abandoned, what)
        raise PhaseFailed(str(exc), kind="deadline", deadline_s=deadline_s, stack=exc.stack) from None
    except LibraryCancelled as exc:
        raise PhaseFailed(str(exc)) from None


def bus_options(sc: Scenario) -> dict[str, Any]:
    """The scenario's options for its bus; for a built-in bus, its own close deadlines are fitted
    inside busmon's ``close_s`` unless set, so busmon never gives up on a close still under way."""
    options = sc.options()
    if is_import_path(sc.url):
        return options
    close = options.setdefault("close_timeout", min(DEFAULT_CLOSE_TIMEOUT_S, 0.6 * sc.deadlines.close_s))
    options.setdefault("drain_timeout", min(DEFAULT_DRAIN_TIMEOUT_S, 0.5 * close))
    return options


async def create(ctx: RunContext) -> None:
    sc = ctx.scenario
    ctx.bus = create_bus(sc.url, **bus_options(sc))
    ctx.state.counters = getattr(ctx.bus, "counters", None)  # the samples' error counts (an adapter may have none)
    await call(ctx, ctx.bus.start(), sc.deadlines.start_s, "start()")


async def close(ctx: RunContext, deadline_s: float) -> PhaseFailed | None:
    """``bus.close()`` under its deadline; the failure, if any, is returned (close always ends)."""
    assert ctx.bus is not None
    try:
        await call(ctx, ctx.bus.close(), deadline_s, "close()")
    except PhaseFailed as exc:
        return exc
    except Exception as exc:
        return PhaseFailed(describe_error(exc))
    return None


async def hold(ctx: RunContext) -> None:
    """The idle time itself is what this phase measures; a bus fault ends it early."""
    faulted = getattr(ctx.bus, "faulted", None)
    if isinstance(faulted, asyncio.Event):
        try:
            async with asyncio.timeout(ctx.spec.hold_s):
                await faulted.wait()
        except TimeoutError:
            return
        raise PhaseFailed(str(getattr(ctx.bus, "fault", "the bus reported a fault")), kind="fault")
    await asyncio.sleep(ctx.spec.hold_s)


def spawn_own(ctx: RunContext, coro, name: str) -> asyncio.Task:
    task = asyncio.create_task(coro, name=name)
    ctx.own.add(task)
    return task


async def subscribe(ctx: RunContext) -> None:
    spec, bus = ctx.spec.subscribe, ctx.bus
    assert bus is not None
    ctx.topics = topics_for(ctx)
    loop = asyncio.get_running_loop()
    group = group_for(ctx)
    budget = ctx.scenario.deadlines.subscribe_s
    deadline = loop.time() + budget
    for topic in ctx.topics:
        group_uid = ctx.audit.unit(topic) if spec.group else None
        for _ in range(spec.count):
            uid = group_uid if group_uid is not None else ctx.audit.unit(topic)
            left = deadline - loop.time()
            try:
                sub = await call(ctx, bus.subscribe(topic, ctx.audit.handler(uid), group=group),
                                 max(0.0, left), f"subscribe({topic!r})")
            except PhaseFailed as exc:
                if exc.kind == "deadline":
                    exc.deadline_s = budget
                    where = f", stuck at {innermost(exc.stack)}" if exc.stack else ""
                    exc.args = (f"subscriptions did not return within {budget:g} s "
                                f"({len(ctx.subscriptions)} of {len(ctx.topics) * spec.count} live; "
                                f"subscribe({topic!r}){where})",)
                raise
            ctx.subscriptions.append(sub)
            if spec.until_s:
                ctx.scopes_left += 1
                spawn_own(ctx, _scope(ctx, sub, spec.until_s), "busmon.subscribe-scope")


async def _scope(ctx: RunContext, sub: Any, until_s: float) -> None:
    """A subscription bound to a deadline, like a Go subscription inside context.WithTimeout."""
    try:
        await asyncio.sleep(until_s)  # the scope's lifetime, not a wait for something
        await sub.unsubscribe()
    finally:
        ctx.scopes_left -= 1
        if ctx.scopes_left == 0:
            ctx.scopes_over.set()


async def load(ctx: RunContext) -> None:
    spec, bus, st = ctx.spec, ctx.bus, ctx.state
    assert bus is not None
    topics = ctx.topics
    per_topic = {t: 0 for t in topics}
    for k in range(spec.keys):  # message j goes to key j % keys, key k to topic k % topics
        n = spec.messages // spec.keys + (1 if k < spec.messages % spec.keys else 0)
        per_topic[topics[k % len(topics)]] += n
    ctx.audit.expect(per_topic)
    payload = bytes(spec.payload_bytes)
    keys = [f"key-{k}" for k in range(spec.keys)]
    loop = asyncio.get_running_loop()
    ctx.load_started = loop.time()

    async def publisher(index: int) -> None:
        seqs: dict[int, int] = {}
        interval = 1.0 / spec.rate_per_s if spec.rate_per_s else 0.0
        for j in range(spec.messages):
            k = j % spec.keys
            if k % spec.publishers != index:
                continue
            if interval:
                due = ctx.load_started + j * interval
                ahead = due - loop.time()
                if ahead > 0.001:
                    await asyncio.sleep(ahead)  # pacing to the configured rate
            seq = seqs.get(k, 0) + 1
            seqs[k] = seq
            topic = topics[k % len(topics)]
            await bus.publish(topic, Envelope(key=keys[k], type="busmon.load", payload=payload,
                                              seq=seq, ts_ns=time.monotonic_ns()))
            ctx.published[topic] = ctx.published.get(topic, 0) + 1
            st.published += 1
            if st.published == checkpoint_at:
                with ctx.instruments.own_work():  # so a cache that fills early and stops is no finding
                    ctx.retained.checkpoint(st.published, exclude_roots=busmon_roots(ctx))

    checkpoint_at = spec.messages // 2 if ctx.retained is not None else -1
    deadline = ctx.load_started + spec.load_timeout_s
    fault = _fault_watch(ctx)
    pubs = [spawn_own(ctx, publisher(i), f"busmon.publisher-{i}") for i in range(spec.publishers)]
    try:
        await _publishing(ctx, pubs, fault, deadline)
        ctx.load_ended = loop.time()
        waiters = [spawn_own(ctx, ctx.audit.wait_all(), "busmon.wait-delivered")]
        if ctx.spec.subscribe.until_s:  # once every scope has ended, nothing more can arrive
            waiters.append(spawn_own(ctx, ctx.scopes_over.wait(), "busmon.wait-scopes"))
        done, pending = await asyncio.wait(waiters + ([fault] if fault else []),
                                           timeout=max(0.0, deadline - loop.time()),
                                           return_when=asyncio.FIRST_COMPLETED)
        await cancel_and_wait(pending)
        ctx.delivered_at = loop.time()
        if fault is not None and fault in done:
            raise PhaseFailed(str(fault.result()), kind="fault")
        if not done:
            raise PhaseFailed(f"{ctx.audit.received:,} of {ctx.audit.expected:,} deliveries within "
                              f"{spec.load_timeout_s:g} s", kind="deadline", deadline_s=spec.load_timeout_s)
    finally:
        if fault is not None:
            await cancel_and_wait([fault])
        if not ctx.load_ended:
            ctx.load_ended = ctx.delivered_at = loop.time()


def _fault_watch(ctx: RunContext) -> asyncio.Task | None:
    """A task that ends with the bus's fault when the bus reports one (built-in buses do)."""
    faulted = getattr(ctx.bus, "faulted", None)
    if not isinstance(faulted, asyncio.Event):
        return None

    async def watch() -> object:
        await faulted.wait()
        return getattr(ctx.bus, "fault", None) or "the bus reported a fault"

    return spawn_own(ctx, watch(), "busmon.fault-watch")


async def _publishing(ctx: RunContext, pubs: list[asyncio.Task], fault: asyncio.Task | None,
                      deadline: float) -> None:
    """Wait for every publisher, the first error, the bus's fault, or the load deadline."""
    loop = asyncio.get_running_loop()
    waiting = set(pubs) | ({fault} if fault else set())
    try:
        while any(not p.done() for p in pubs):
            done, _ = await asyncio.wait(waiting, timeout=max(0.0, deadline - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done:
                stuck = next(p for p in pubs if not p.done())
                stack = task_stack(stuck)
                where = f"; stuck at {innermost(stack)}" if stack else ""
                raise PhaseFailed(f"publishing did not finish within {ctx.spec.load_timeout_s:g} s "
                                  f"({ctx.state.published:,} of {ctx.spec.messages:,} published{where})",
                                  kind="deadline", deadline_s=ctx.spec.load_timeout_s, stack=stack)
            waiting -= done
            if fault is not None and fault in done:
                raise PhaseFailed(str(fault.result()), kind="fault")
            for p in done:
                if not p.cancelled() and p.exception() is not None:
                    exc = p.exception()
                    if isinstance(exc, PhaseFailed):
                        raise exc
                    raise PhaseFailed(f"publish(): {describe_error(exc)}") from exc
    finally:
        for p in await cancel_and_wait(pubs):
            ctx.abandon(p, "publish()")
        for p in pubs:
            if p.done() and not p.cancelled():
                p.exception()  # retrieved: reported through PhaseFailed, not by asyncio's logger


def throughput(ctx: RunContext) -> dict[str, Any]:
    pub_s = max(1e-9, ctx.load_ended - ctx.load_started) if ctx.load_ended else 0.0
    del_s = max(1e-9, ctx.delivered_at - ctx.load_started) if ctx.delivered_at else 0.0
    return {
        "publish_per_s": round(ctx.state.published / pub_s, 1) if pub_s else 0.0,
        "deliver_per_s": round(ctx.audit.received / del_s, 1) if del_s else 0.0,
        "load_s": round(del_s, 4),
        "latency_ms": ctx.audit.latency.summary_ms(),
    }


def ignore_rules(probes: ProbeSpec) -> IgnoreRules:
    return IgnoreRules(tuple(probes.ignore_tasks), tuple(probes.ignore_threads), tuple(probes.ignore_sockets),
                       tuple(probes.ignore_processes))


def run_notes(ctx: RunContext) -> tuple[str, ...]:
    """What this run could not judge, and why."""
    notes = []
    if ctx.baseline is not None and ctx.baseline.fds is None:
        notes.append(UNSUPPORTED_NOTE)
    if ctx.scenario.probes.trace_memory:
        notes.append("stalls are not judged with trace_memory on: tracemalloc slows every allocation, "
                     "so the loop's lag is busmon's as much as the bus's")
    return tuple(notes)


def busmon_roots(ctx: RunContext) -> list[Any]:
    """busmon's own records of this run: what they hold is never the bus's retained memory."""
    # not the task tracker: its entry per live task (10,000 idle ones) would be walked each time,
    # and the few it makes during a run (one per task alive) never grow with the envelopes
    # linecache.cache: the loop watchdog reads source lines to name a stall, which loads whole
    # files mid-run (hundreds of strings that appear during load); a cache bounded by the source
    # files, never by the envelopes, and invisible to the holder walk while the baseline is frozen
    # modules first imported during the run (a library importing its backend lazily on first
    # use: anyio's asyncio backend under FastStream, ~460 functions): an import happens once,
    # it never grows with the envelopes, so what the module holds is not retained memory
    imported = [m for name, m in list(sys.modules.items()) if name not in ctx.modules_before and m is not None]
    return [ctx.audit, ctx.phases, ctx.state, ctx.published, ctx.own, ctx.stuck,
            ctx.instruments.loopwatch, *ctx.instruments.roots, linecache.cache, *imported]


def stall_line(stall: Any, limit_ms: float) -> str:
    """``the event loop was blocked for 251 ms (fail_on_stall_ms = 200) at …: time.sleep(…)``"""
    where = f" at {stall.blocking}" if stall.blocking else ""
    return f"the event loop was blocked for {stall.duration_ms:,.0f} ms (fail_on_stall_ms = {limit_ms:g}){where}"


def memory_summary(ctx: RunContext, judged: dict[str, Any]) -> dict[str, Any]:
    """RSS per phase and its drift against the first run's baseline, beside the retained-object
    verdict."""
    rss = {p.phase: p.rss_mb for p in ctx.phases}
    base = ctx.first_rss_mb if ctx.first_rss_mb is not None else rss.get("baseline", 0.0)
    settled = rss.get("settle", 0.0)
    return {"rss_mb": rss, "rss_drift_mb": round(settled - base, 1), **judged}


async def resolve_brokers(ctx: RunContext) -> dict[str, str]:
    """The broker's addresses as sockets show them (ip:port), to attribute sockets to it."""
    try:
        _, addresses = broker_addresses(ctx.scenario.url)
    except Exception:
        return {}
    loop = asyncio.get_running_loop()
    found: list[tuple[str, int]] = []
    for host, port in addresses:
        try:
            ipaddress.ip_address(host)
            found.append((host, port))
            continue
        except ValueError:
            pass
        try:
            async with asyncio.timeout(BROKER_CHECK_S):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError):
            continue
        found += [(str(info[4][0]), int(info[4][1])) for info in infos]
    return brokers_of(ctx.scenario.backend, found)
