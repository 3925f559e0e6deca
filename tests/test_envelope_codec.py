"""Envelope validation, the wire codec, and garbage on the wire."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from busmon.bus import DecodeError, Envelope, create_bus, decode, encode
from busmon.bus import codec
from busmon.bus.codec import Framer
from busmon.bus.errors import BusConfigError
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


names = st.text(min_size=1, max_size=40)
envelopes = st.builds(Envelope, key=names, type=names, payload=st.binary(max_size=64),
                      seq=st.integers(0, 2**64 - 1), ts_ns=st.integers(0, 2**64 - 1),
                      headers=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2))


@settings(max_examples=300, deadline=None)
@given(envelopes, st.integers(0, 40))
def test_a_known_key_decodes_the_same_fast_and_careful(e, cut):
    """The second frame of a (key, type) pair takes the decoder's fast path: it must read the
    same envelope, give bytes from any bytes-like frame, and refuse the same garbage."""
    frame = encode(e)
    assert decode(frame) == e  # the careful path, which learns the key and type
    assert decode(frame) == e  # the fast path
    for view in (bytearray(frame), memoryview(frame)):
        got = decode(view)
        assert got == e and type(got.payload) is bytes
    if cut < len(frame) - len(e.payload):
        with pytest.raises(DecodeError):  # cut inside what precedes the payload
            decode(frame[:cut])


def test_the_decoders_memo_of_names_is_bounded(monkeypatch):
    monkeypatch.setattr(codec, "MAX_NAMES", 10)
    monkeypatch.setattr(codec, "_names", {})
    for i in range(25):
        assert decode(encode(Envelope(key=f"key-{i}", type="t", payload=b""))).key == f"key-{i}"
    assert 0 < len(codec._names) <= 10


def test_the_framer_stamps_per_key_as_publish_does_and_frames_like_encode():
    framer = Framer()
    sent = [Envelope(key=k, type=t, payload=p) for k, t, p in
            [("a", "x", b"1"), ("b", "x", b"2"), ("a", "y", b"3"), ("a", "x", b"4"), ("b", "x", b"")]]
    sent.append(Envelope(key="a", type="x", payload=b"5", headers={"h": "v"}))
    sent.append(Envelope(key="a", type="x", payload=b"6", seq=99, ts_ns=7))  # given: kept
    got = [decode(framer.frame(e)) for e in sent]
    assert [(g.key, g.type, g.payload, g.seq) for g in got] == [
        ("a", "x", b"1", 1), ("b", "x", b"2", 1), ("a", "y", b"3", 2), ("a", "x", b"4", 3),
        ("b", "x", b"", 2), ("a", "x", b"5", 4), ("a", "x", b"6", 99)]
    assert got[5].headers == {"h": "v"} and got[6].ts_ns == 7
    assert all(g.ts_ns > 0 for g in got)
    assert all(framer.frame(g) == encode(g) for g in got)  # stamped already: the very same bytes
    assert framer.next_seq("a") == 5 and framer.next_seq("new") == 1


@pytest.mark.parametrize("kwargs, field", [
    (dict(key="k" * 65_536, type="t"), "Envelope.key"),
    (dict(key="é" * 40_000, type="t"), "Envelope.key"),  # 40,000 characters, 80,000 bytes
    (dict(key="k", type="t" * 70_000), "Envelope.type"),
    (dict(key="k", type="t", headers={"h": "v" * 70_000}), r"Envelope.headers\['h'\]"),
])
def test_a_field_too_long_for_the_wire_is_refused_on_every_backend(kwargs, field):
    """The frame gives each 16 bits of length: refused when the envelope is made, so a bus tested
    on memory:// does not fail only once it runs on a broker."""
    with pytest.raises(ValueError, match=f"{field} must be at most 65535 bytes"):
        Envelope(payload=b"", **kwargs)
    longest = Envelope(key="k" * 65_535, type="t", payload=b"")  # exactly fits: framed and read back
    assert decode(Framer().frame(longest)).key == longest.key


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
