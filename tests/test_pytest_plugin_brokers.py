"""The pytest plugin on the real client libraries, against real brokers on loopback.

A test that uses nats-py or aiokafka correctly passes under ``@pytest.mark.busmon``; one that
forgets ``nc.close()`` or ``consumer.stop()`` fails naming the library's tasks and its sockets;
nats-py's ``unsubscribe()`` cancels its subscription task without awaiting it: a plain count
right after it sees one task too many, busmon's settled verdict is clean.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.brokers import Broker

pytest_plugins = ["pytester"]

ASYNCIO = "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
ANYIO = "[pytest]\n"
#: pytest-asyncio runs the async tests of the first file; anyio (with pytest-asyncio off) the second
HARNESSES = {
    "pytest-asyncio": (ASYNCIO, "", ()),
    "anyio": (ANYIO, "pytestmark = pytest.mark.anyio\n\n@pytest.fixture\ndef anyio_backend():\n"
                     "    return 'asyncio'\n", ("-p", "no:asyncio")),
}


def run(pytester: pytest.Pytester, harness: str, source: str, *args: str) -> pytest.RunResult:
    ini, preamble, extra = HARNESSES[harness]
    pytester.makefile(".ini", pytest=ini)
    head, _, body = textwrap.dedent(source).partition("\n\n")
    pytester.makepyfile(test_inline=f"{head}\n\n{preamble}\n{body}")
    return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:textual-snapshot", "-p", "no:syrupy",
                              *extra, *args)


NATS_TESTS = """
import os, pytest, nats

URL = os.environ["BUSMON_TEST_NATS"]
KEPT = []

@pytest.mark.busmon(settle_timeout_s=0.5)
async def test_forgets_close():
    nc = await nats.connect(URL)
    await nc.publish("orders", b"1")
    await nc.flush()
    KEPT.append(nc)          # still referenced: the client and its tasks stay alive

@pytest.mark.busmon
async def test_closes():
    nc = await nats.connect(URL)
    await nc.publish("orders", b"1")
    await nc.close()

@pytest.fixture
async def nc():
    nc = await nats.connect(URL)
    yield nc
    await nc.close()

async def handler(msg):
    pass

@pytest.mark.busmon(ignore_tasks=["Client._*"], ignore_sockets=["nats"])
async def test_a_client_kept_on_purpose_is_ignored_by_its_owner():
    KEPT.append(await nats.connect(URL))

@pytest.mark.busmon
async def test_fixture_closes_what_the_test_subscribed(nc):
    await nc.subscribe("orders", cb=handler)
"""


@pytest.mark.nats
@pytest.mark.parametrize("harness", HARNESSES)
def test_nats_forgotten_close_fails_naming_the_tasks_and_socket(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, nats_broker: Broker, harness: str) -> None:
    monkeypatch.setenv("BUSMON_TEST_NATS", nats_broker.url)
    result = run(pytester, harness, NATS_TESTS)
    result.assert_outcomes(passed=4, errors=1)
    port = nats_broker.url.rsplit(":", 1)[1]
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_forgets_close*",
        "busmon: test_inline.py::test_forgets_close leaked 3 tasks and 1 socket",
        "*a plain count right at the end saw 3 new tasks and 0 new threads",
        "  task Client._read_loop (nats · Task-*)  leaked: still running after 5?? ms",
        "    now at nats/aio/*",
        "    stack (innermost last):",
        "      nats/aio/client.py:* in _read_loop",
        "  task Client._*(nats · Task-*)  leaked: still running after 5?? ms",
        "  task Client._*(nats · Task-*)  leaked: still running after 5?? ms",
        f"  socket tcp → 127.0.0.1:{port} (nats)  leaked: still open after 5?? ms",
        "    fd *, local 127.0.0.1:*, ESTABLISHED",
        "    created at nats/aio/transport.py:* in connect",
        "busmon: 4 tests judged, 1 leaked*",
        "*ERROR test_inline.py::test_forgets_close - busmon: leaked 3 tasks and 1 sock*",
    ])
    text = result.stdout.str()
    for task in ("Client._read_loop", "Client._ping_interval", "Client._flusher"):
        assert f"task {task} (nats" in text


@pytest.mark.nats
@pytest.mark.parametrize("harness", HARNESSES)
def test_nats_unsubscribe_cancels_without_awaiting_and_is_clean_once_settled(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, nats_broker: Broker, harness: str) -> None:
    """nats-py's ``Subscription.unsubscribe()`` cancels the subscription's task and returns
    before it has finished: counted right then, it is one task too many."""
    monkeypatch.setenv("BUSMON_TEST_NATS", nats_broker.url)
    result = run(pytester, harness, """
        import asyncio, os, pytest, nats
        from busmon.probes.watching.watch import watch

        URL = os.environ["BUSMON_TEST_NATS"]

        async def handler(msg):
            pass

        @pytest.fixture
        async def nc():
            nc = await nats.connect(URL)
            yield nc
            await nc.close()

        def the_lingerer(result):
            [lingered] = result.lingered
            return lingered.detail, lingered.component

        async def test_the_fixture_judges_right_after_unsubscribe(nc, busmon):
            sub = await nc.subscribe("orders", cb=handler)
            await nc.publish("orders", b"1")
            await nc.flush()
            await sub.unsubscribe()
            result = await busmon.acheck()
            assert result.at_end["tasks"] == 1, result.report()   # what a plain count saw
            assert result.verdict == "clean", result.report()
            assert the_lingerer(result) == ("Subscription._wait_for_msgs", "nats")

        async def test_watch_judges_a_block(nc):
            async with watch(on_leak="raise") as w:
                sub = await nc.subscribe("orders", cb=handler)
                await sub.unsubscribe()
            assert w.result.at_end["tasks"] == 1, w.result.report()
            assert w.verdict == "clean"
            assert the_lingerer(w.result) == ("Subscription._wait_for_msgs", "nats")
    """, "--busmon")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["busmon: 2 tests judged"])


KAFKA_TESTS = """
import os, uuid, pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

SERVERS = os.environ["BUSMON_TEST_KAFKA"]
KEPT = []

@pytest.fixture(autouse=True, scope="module")
def forget_the_kept_ones():  # their complaint about being unclosed stays in this session
    yield
    KEPT.clear()

def topic():
    return "t-" + uuid.uuid4().hex[:8]

@pytest.mark.busmon(settle_timeout_s=0.5)
async def test_forgets_stop():
    consumer = AIOKafkaConsumer(topic(), bootstrap_servers=SERVERS)
    await consumer.start()
    KEPT.append(consumer)

@pytest.mark.busmon
async def test_stops():
    name = topic()
    producer = AIOKafkaProducer(bootstrap_servers=SERVERS)
    await producer.start()
    try:
        await producer.send_and_wait(name, b"1")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(name, bootstrap_servers=SERVERS, auto_offset_reset="earliest")
    await consumer.start()
    try:
        assert (await consumer.getone()).value == b"1"
    finally:
        await consumer.stop()
"""


@pytest.mark.kafka
def test_aiokafka_forgotten_stop_fails_naming_the_tasks_and_sockets(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, kafka_broker: Broker) -> None:
    monkeypatch.setenv("BUSMON_TEST_KAFKA", kafka_broker.url.removeprefix("kafka://"))
    result = run(pytester, "pytest-asyncio", KAFKA_TESTS)
    result.assert_outcomes(passed=2, errors=1)
    port = kafka_broker.url.rsplit(":", 1)[1]
    result.stdout.fnmatch_lines([
        "busmon: test_inline.py::test_forgets_stop leaked * tasks*",
        "busmon: 2 tests judged, 1 leaked*",
        "*ERROR test_inline.py::test_forgets_stop - busmon: leaked * tasks*",
    ])
    text = result.stdout.str()
    for task in ("AIOKafkaClient._md_synchronizer", "Fetcher._fetch_requests_routine", "AIOKafkaConnection._read"):
        assert f"task {task} (aiokafka" in text, task
    assert f"socket tcp → 127.0.0.1:{port} (aiokafka)  leaked" in text
    assert "test_stops" not in text.split("short test summary")[1]
