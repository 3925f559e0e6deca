"""The FastStream backends and the raw clients keep busmon's bus contract on real brokers; the
FastStream backends' shutdown is FastStream's own: clean with ``broker.stop()``, leaked (nats' and
aiokafka's tasks named) without.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from busmon.bus import BusClosedError, BusConnectError, Envelope, create_bus
from busmon.bus.errors import BusConfigError
from busmon.probes.harness.scenario import load_scenario, parse_scenario
from busmon.probes.harness.session import Session
from tests.brokers import free_port
from tests.helpers import (Collector, assert_in_order_no_loss, assert_nothing_left, check_handler_errors_are_counted,
                           check_unsubscribe_stops_delivery, live_tasks, live_threads, publish_many)

SAMPLES = Path(__file__).resolve().parents[1] / "sample_configs"
N, KEYS = 300, 20
FASTSTREAM = ["faststream-kafka", "faststream-nats", "faststream-nats-js"]
BACKENDS = [*FASTSTREAM, "raw-kafka", "raw-nats"]
SCHEME = {"faststream-kafka": "faststream+kafka", "faststream-nats": "faststream+nats",
          "faststream-nats-js": "faststream+nats+js", "raw-kafka": "raw+kafka", "raw-nats": "raw+nats"}


def needs_faststream(backend: str) -> None:
    if backend in FASTSTREAM:
        pytest.importorskip("faststream", reason="the FastStream backends need: pip install 'busmon[faststream]'")


@pytest.fixture(params=BACKENDS)
def fs_backend(request: pytest.FixtureRequest) -> str:
    needs_faststream(request.param)
    return request.param


@pytest.fixture(params=FASTSTREAM)
def faststream_backend(request: pytest.FixtureRequest) -> str:
    needs_faststream(request.param)
    return request.param


def fs_url(request: pytest.FixtureRequest, backend: str) -> str:
    broker = request.getfixturevalue("kafka_broker" if backend.endswith("kafka") else "nats_broker")
    return f"{SCHEME[backend]}://{broker.url.split('://', 1)[1]}"


def fs_options(backend: str) -> dict:
    # unconfirmed Kafka publishing and JetStream in memory keep the suite fast
    return {"faststream-kafka": {"confirm": False}, "faststream-nats-js": {"storage": "memory"}}.get(backend, {})


@pytest.fixture
async def fs_bus(request: pytest.FixtureRequest, fs_backend: str):
    bus = create_bus(fs_url(request, fs_backend), **fs_options(fs_backend))
    await bus.start()
    yield bus
    await bus.close()


async def test_per_key_order_with_several_subscribers(fs_bus, topic):
    subs = [Collector(f"sub{i}") for i in range(2)]
    for c in subs:
        await fs_bus.subscribe(topic, c)
    await publish_many(fs_bus, topic, N, KEYS)
    for c in subs:
        await c.wait_for(N)
        assert_in_order_no_loss(c, N, KEYS)
    assert fs_bus.counters.published == N and fs_bus.counters.delivered == 2 * N


async def test_once_per_group(fs_bus, topic):
    group, other = Collector("group g"), Collector("group h")
    # group names of this test's own: a name reused on Tansu joins a stale group and stalls
    await fs_bus.subscribe(topic, group, group=f"g-{topic}")
    await fs_bus.subscribe(topic, group, group=f"g-{topic}")
    await fs_bus.subscribe(topic, other, group=f"h-{topic}")
    await publish_many(fs_bus, topic, N, KEYS)
    await other.wait_for(N)
    await group.wait_for(N)
    seen = [(e.key, e.seq) for e in group.received]
    assert len(seen) == N and len(set(seen)) == N, "each envelope once within the group"


async def test_handler_errors_are_counted_and_delivery_goes_on(fs_bus, topic):
    await check_handler_errors_are_counted(fs_bus, topic, 100)


async def test_unsubscribe_stops_delivery(fs_bus, topic):
    await check_unsubscribe_stops_delivery(fs_bus, topic)


async def test_close_is_faststreams_stop_and_leaves_nothing(request, fs_backend, topic):
    tasks_before, threads_before = live_tasks(), live_threads()
    bus = create_bus(fs_url(request, fs_backend), **fs_options(fs_backend))
    await bus.start()
    c = Collector()
    await bus.subscribe(topic, c)
    await bus.subscribe(topic, Collector(), group=f"grp-{topic}")
    await publish_many(bus, topic, 50, keys=5)
    await c.wait_for(50)
    await asyncio.gather(bus.close(), bus.close())  # idempotent, concurrent-safe
    assert_nothing_left(tasks_before, threads_before)
    with pytest.raises(BusClosedError):
        await bus.publish(topic, Envelope(key="k", type="t", payload=b""))


@pytest.mark.parametrize("scheme", list(SCHEME.values()))
async def test_unreachable_broker_fails_fast_and_cleanly(scheme):
    needs_faststream(scheme.replace("+", "-"))
    tasks_before = live_tasks()
    bus = create_bus(f"{scheme}://127.0.0.1:{free_port()}", connect_timeout=2.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BusConnectError, match=rf"^{scheme.replace('+', '.')} 127.0.0.1:\d+: "):
        await bus.start()
    assert loop.time() - started < 10
    await bus.close()
    assert not live_tasks() - tasks_before


def test_a_missing_faststream_is_one_line(monkeypatch):
    needs_faststream("faststream-nats")
    for name in ("faststream.kafka", "faststream.nats"):
        monkeypatch.setitem(sys.modules, name, None)  # as if the extra were not installed
    with pytest.raises(BusConfigError, match=r"^faststream\+nats:// needs FastStream, an optional part of "
                                             r"busmon: install busmon with its faststream extra \(in "
                                             r"busmon's folder: pip install -e '\.\[faststream\]'\)"):
        create_bus("faststream+nats://127.0.0.1:4222")


def test_bad_options_name_themselves():
    needs_faststream("faststream-nats")
    with pytest.raises(BusConfigError, match="unknown option 'confrim'; did you mean 'confirm'"):
        create_bus("faststream+kafka://127.0.0.1:9092", confrim=False)
    with pytest.raises(BusConfigError, match="max_workers must be a whole number >= 1"):
        create_bus("faststream+nats://127.0.0.1:4222", max_workers=0)


LADDER = """
name = "FastStream ladder"
backend = "{backend}"
url = "{url}"
[bus]
{options}
[probes]
settle_timeout_s = {settle}
[defaults]
keys = 20
topics = 2
[defaults.subscribe]
{group}
[[runs]]
name = "low"
messages = 200
[[runs]]
name = "high"
messages = 1000
"""


def ladder(request, backend: str, stop: bool) -> str:
    given = fs_options(backend) | ({"stop_broker": stop} if backend in FASTSTREAM else {})
    options = "\n".join(f"{k} = {str(v).lower() if isinstance(v, bool) else repr(v)}"
                        for k, v in given.items()).replace("'", '"')
    # Kafka's groups are tested above; here a group join (~5 s per member on Tansu) would only
    # make the ladder slow
    group = "" if backend.endswith("kafka") else 'group = "billing"'
    return LADDER.format(backend=backend, url=fs_url(request, backend), options=options,
                         settle=5 if stop else 1, group=group)


def test_the_ladder_is_clean(request, fs_backend):
    sc = parse_scenario(ladder(request, fs_backend, stop=True))
    with Session(sc, lambda e: None) as session:
        result = session.play()
    for r in result.runs:
        assert r.verdict == "clean", (fs_backend, r.name, r.error, [x for x in r.leftovers if x.state == "leaked"])
        assert r.delivery["lost"] == 0 and r.delivery["duplicated"] == 0
        assert r.delivery["received"] == r.delivery["sent"] == {"low": 200, "high": 1000}[r.name]
        assert r.drift == {"tasks": 0, "threads": 0}, (fs_backend, r.name, r.drift)


EXPECTED_TASKS = {"faststream-kafka": ("AIOKafkaClient._md_synchronizer", "AIOKafkaConnection._read"),
                  "faststream-nats": ("Client._read_loop", "Client._ping_interval", "Client._flusher"),
                  "faststream-nats-js": ("Client._read_loop", "Client._ping_interval", "Client._flusher")}


def test_without_the_stop_the_leak_is_named(request, faststream_backend):
    """The negative control: close without ``broker.stop()``."""
    fs_backend = faststream_backend
    sc = parse_scenario(ladder(request, fs_backend, stop=False))
    with Session(sc, lambda e: None) as session:
        result = session.play()
    first = result.runs[0]
    assert first.verdict == "leaked"
    leaked = {x.detail.split(" (")[0] for x in first.leftovers if x.state == "leaked" and x.kind == "task"}
    for name in EXPECTED_TASKS[fs_backend]:
        assert name in leaked, (fs_backend, sorted(leaked))
    component = "aiokafka" if fs_backend == "faststream-kafka" else "nats"
    assert any(x.kind == "socket" and x.component == component and x.state == "leaked" for x in first.leftovers)


def test_sample_configs_load():
    for name in ("faststream.toml",):
        sc = load_scenario(SAMPLES / name)
        assert sc.backend.startswith("faststream-")


def test_compare_puts_faststream_beside_busmons_own_bus_and_the_raw_client(request, monkeypatch, capsys):
    from busmon.tui import cli

    needs_faststream("faststream-nats")
    hostport = request.getfixturevalue("nats_broker").url.split("://", 1)[1]
    monkeypatch.setattr(sys, "argv", ["busmon", "compare", str(SAMPLES / "compare.toml"), "--backends",
                                      "raw-nats,nats,faststream-nats", "--url", f"nats=nats://{hostport}",
                                      "--url", f"faststream-nats=faststream+nats://{hostport}",
                                      "--url", f"raw-nats=raw+nats://{hostport}"])
    monkeypatch.setenv("COLUMNS", "160")
    with pytest.raises(SystemExit) as info:
        cli.main()
    out = capsys.readouterr().out
    assert info.value.code == 0, out
    table = out[out.index("busmon compare:"):]
    header = next(line for line in table.splitlines() if "faststream-n" in line and "=" not in line)
    assert header.split() == ["raw-nats", "nats", "faststream-n"], header   # side by side
    assert "faststream-n = faststream-nats" in table              # the legend for the short name
    assert table.count("clean") >= 7   # the title, and each run on each backend


@pytest.mark.parametrize("stop", [True, False], ids=["with-stop", "stop-left-out"])
def test_the_sample_plays_on_each_faststream_backend(request, faststream_backend, stop, tmp_path, monkeypatch,
                                                      capsys):
    """The issue's done-criterion: ``busmon play sample_configs/faststream.toml --headless`` is clean
    on each of the three, with the per-phase task table; with the stop left out, the leak is named."""
    from busmon.tui import cli

    sample = (SAMPLES / "faststream.toml").read_text()
    if not stop:
        sample = sample.replace("stop_broker = true", "stop_broker = false")
    scenario = tmp_path / "faststream.toml"
    scenario.write_text(sample.replace("settle_timeout_s = 5", "settle_timeout_s = 5" if stop else "settle_timeout_s = 1"))
    report = tmp_path / "report.md"
    monkeypatch.setattr(sys, "argv", ["busmon", "play", str(scenario), "--headless", "--url",
                                      fs_url(request, faststream_backend), "--report", str(report)])
    monkeypatch.setenv("COLUMNS", "160")
    with pytest.raises(SystemExit) as info:
        cli.main()
    out = capsys.readouterr().out
    text = report.read_text()
    if stop:
        assert info.value.code == 0, out
        assert "| baseline |" in text and "| settle |" in text, text[:2000]   # the per-phase task table
    else:
        assert info.value.code == 1, out
        expected = EXPECTED_TASKS[faststream_backend][0]
        assert expected in out or expected in text, out
