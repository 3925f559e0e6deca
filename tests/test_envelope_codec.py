"""Envelope validation, the wire codec, and garbage on the wire."""

from __future__ import annotations

import pytest

from bus import DecodeError, Envelope, create_bus, decode, encode
from bus.errors import BusConfigError
from tests.helpers import Collector


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(key="", type="t", payload=b""), "key"),
        (dict(key="k", type="", payload=b""), "type"),
        (dict(key="k", type="t", payload="text"), "payload"),
        (dict(key="k", type="t", payload=b"", seq=-1), "seq"),
        (dict(key="k", type="t", payload=b"", headers={"a": 1}), "headers"),
    ],
)
def test_bad_envelopes_raise_a_clear_value_error(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Envelope(**kwargs)


def test_round_trip_keeps_every_field():
    e = Envelope(key="order-1", type="OrderPlaced", payload=b"\x00\xffdata", seq=42,
                 ts_ns=123456789, headers={"trace": "abc", "ü": "ß"})
    assert decode(encode(e)) == e


@pytest.mark.parametrize("frame", [b"", b"BM", b"XX" + bytes(30), b"BM\x02" + bytes(30),
                                   encode(Envelope(key="k", type="t", payload=b""))[:25]])
def test_garbage_is_a_decode_error(frame):
    with pytest.raises(DecodeError):
        decode(frame)


@pytest.mark.parametrize("url", ["redis://x", "kafka://", "nats://host:notaport", "nomodule.here:make",
                                 "json:nonexistent", "plain"])
def test_bad_bus_urls_are_config_errors(url):
    with pytest.raises(BusConfigError):
        create_bus(url)


def test_unknown_option_is_a_config_error():
    with pytest.raises(BusConfigError, match="frobnicate"):
        create_bus("memory://", frobnicate=1)


@pytest.mark.parametrize("backend", ["kafka", "nats", "nats+js"])
async def test_garbage_from_the_wire_is_counted_not_fatal(request, backend, topic):
    """A foreign producer writes junk into the topic; the bus counts it and goes on."""
    from tests.conftest import backend_options, backend_url

    url = backend_url(request, backend)
    bus = create_bus(url, **backend_options(backend))
    await bus.start()
    c = Collector()
    try:
        await bus.subscribe(topic, c)
        if backend == "kafka":
            from aiokafka import AIOKafkaProducer

            p = AIOKafkaProducer(bootstrap_servers=url.split("://")[1])
            await p.start()
            try:
                # the same record key as the good envelope below: one partition, so in order
                await p.send_and_wait(topic, b"not an envelope", key=b"k")
                await p.send_and_wait(topic, None, key=b"k")  # a tombstone: no value at all
            finally:
                await p.stop()
        else:
            import nats

            nc = await nats.connect(url.replace("nats+js://", "nats://"))
            try:
                if backend == "nats+js":
                    await nc.jetstream().publish(topic, b"not an envelope")
                else:
                    await nc.publish(topic, b"not an envelope")
                    await nc.flush()
            finally:
                await nc.close()
        await bus.publish(topic, Envelope(key="k", type="t", payload=b"ok"))
        # the garbage was written first and read first (one partition, one subject, one stream):
        # once the good envelope has arrived, the garbage has been counted
        await c.wait_for(1)
        assert bus.counters.decode_errors == (2 if backend == "kafka" else 1)
        assert c.received[0].payload == b"ok"
    finally:
        await bus.close()
