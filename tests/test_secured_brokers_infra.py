"""The secured-broker test infrastructure is real: raw clients (nats-py, aiokafka, not busmon)
get in with the right credentials / CA / client certificate and are refused otherwise."""

from __future__ import annotations

import ssl
import time
import uuid
from pathlib import Path

import nats
import nats.errors
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError
from aiokafka.helpers import create_ssl_context

from tests.brokers import Broker
from tests.secured_brokers import (Certs, make_certs, nats_secured, nkey_user, tansu_authenticated,
                                   tansu_tls)

# every special character of nats-server's config format at once: quotes, backslash, `$`
# (variable syntax outside quotes), `#` (comment outside quotes), spaces, a tab, non-ASCII
# and control characters that need \xXX (JSON's \b and \u0001 are refused by nats-server)
TRICKY_PASSWORD = 'p a"s$s#w\\o\trd ${HOME} $PATH é\x01\x08\x7f'


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


# -- NATS ---------------------------------------------------------------------------------------

async def _ignore(_exc: Exception) -> None:
    pass  # nats-py would log each refused connection with a traceback


async def nats_connect(broker: Broker, **options) -> nats.NATS:
    """Connect once, failing fast (no reconnects), and prove the connection with a round trip."""
    nc = await nats.connect(broker.url, allow_reconnect=False, max_reconnect_attempts=1,
                            connect_timeout=2, error_cb=_ignore, **options)
    sub = await nc.subscribe("infra.check")
    await nc.publish("infra.check", b"ping")
    msg = await sub.next_msg(timeout=2)
    assert msg.data == b"ping"
    return nc


@pytest.mark.nats
async def test_nats_user_password_with_special_characters() -> None:
    with nats_secured(None, user="bob", password=TRICKY_PASSWORD) as broker:
        assert broker.url.startswith("nats://127.0.0.1:") and "bob" not in broker.url
        nc = await nats_connect(broker, user="bob", password=TRICKY_PASSWORD)
        assert (await nc.jetstream().account_info()) is not None  # JetStream is on
        await nc.close()
        # the literal password got in, so nothing in it was expanded or cut off as a comment;
        # and the server holds exactly it: near misses are refused
        for wrong in ("wrong", TRICKY_PASSWORD[:-1], TRICKY_PASSWORD + "x"):
            with pytest.raises(nats.errors.Error, match="Authorization Violation"):
                await nats_connect(broker, user="bob", password=wrong)


@pytest.mark.nats
async def test_nats_token() -> None:
    with nats_secured(None, token="s3cret-t0ken$#") as broker:
        await (await nats_connect(broker, token="s3cret-t0ken$#")).close()
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats_connect(broker, token="wrong")
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats_connect(broker)


@pytest.mark.nats
async def test_nats_nkey(tmp_path: Path) -> None:
    public, seed_file = nkey_user(tmp_path)
    assert public.startswith("U") and seed_file.read_text().startswith("SU")
    _other_public, other_seed_file = nkey_user(tmp_path)
    with nats_secured(None, nkey_public=public) as broker:
        await (await nats_connect(broker, nkeys_seed=str(seed_file))).close()
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats_connect(broker, nkeys_seed=str(other_seed_file))


@pytest.mark.nats
async def test_nats_tls(certs: Certs) -> None:
    with nats_secured(certs, tls=True) as broker:
        await (await nats_connect(broker, tls=ssl.create_default_context(cafile=certs.ca_file))).close()
        with pytest.raises(ssl.SSLCertVerificationError):
            await nats_connect(broker, tls=ssl.create_default_context(cafile=certs.other_ca_file))


@pytest.mark.nats
async def test_nats_mutual_tls_with_password(certs: Certs) -> None:
    with nats_secured(certs, tls=True, verify_clients=True, user="bob", password="pw") as broker:
        context = ssl.create_default_context(cafile=certs.ca_file)
        context.load_cert_chain(certs.client_cert, certs.client_key)
        await (await nats_connect(broker, tls=context, user="bob", password="pw")).close()
        # without a client certificate the server drops the connection after the TLS 1.3
        # handshake; nats-py sees it as BrokenPipeError or a reset (an OSError either way)
        with pytest.raises((OSError, nats.errors.Error)):
            await nats_connect(broker, tls=ssl.create_default_context(cafile=certs.ca_file),
                               user="bob", password="pw")


# -- Tansu (Kafka) ------------------------------------------------------------------------------

async def kafka_round_trip(broker: Broker, **security) -> None:
    """Produce one record to a new topic and read it back from the beginning."""
    bootstrap = f"127.0.0.1:{broker.port}"
    topic = f"infra-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=3000, **security)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", request_timeout_ms=3000, **security)
    await consumer.start()
    try:
        record = await consumer.getone()
    finally:
        await consumer.stop()
    assert (record.key, record.value) == (b"k", b"hello")


async def kafka_start_fails(broker: Broker, **security) -> BaseException:
    producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{broker.port}",
                                request_timeout_ms=3000, **security)
    started = time.monotonic()
    try:
        with pytest.raises(Exception) as caught:
            await producer.start()
    finally:
        await producer.stop()
    assert time.monotonic() - started < 5
    return caught.value


@pytest.mark.kafka
async def test_tansu_tls(certs: Certs) -> None:
    with tansu_tls(certs) as broker:
        assert broker.url == f"kafka://127.0.0.1:{broker.port}"
        await kafka_round_trip(broker, security_protocol="SSL",
                               ssl_context=create_ssl_context(cafile=certs.ca_file))
        # a client that does not trust the server's CA never gets to Tansu
        error = await kafka_start_fails(broker, security_protocol="SSL",
                                        ssl_context=create_ssl_context(cafile=certs.other_ca_file))
        assert isinstance(error, KafkaConnectionError)
        # the plaintext port is not what clients are sent to: a plaintext client of the proxy fails
        error = await kafka_start_fails(broker)
        assert isinstance(error, KafkaConnectionError)
        proxy = broker.extra_procs[0]
    assert proxy.returncode == 0  # SIGTERM is a clean exit
    assert broker.proc.returncode is not None


@pytest.mark.kafka
async def test_tansu_mutual_tls(certs: Certs) -> None:
    with tansu_tls(certs, verify_clients=True) as broker:
        await kafka_round_trip(broker, security_protocol="SSL", ssl_context=create_ssl_context(
            cafile=certs.ca_file, certfile=certs.client_cert, keyfile=certs.client_key))
        # no client certificate: the proxy refuses the handshake (the client sees a closed
        # connection, hence KafkaConnectionError)
        error = await kafka_start_fails(broker, security_protocol="SSL",
                                        ssl_context=create_ssl_context(cafile=certs.ca_file))
        assert isinstance(error, KafkaConnectionError)


@pytest.mark.kafka
async def test_tansu_authenticated_refuses_wrong_scram_credentials() -> None:
    with tansu_authenticated() as broker:
        error = await kafka_start_fails(broker, security_protocol="SASL_PLAINTEXT",
                                        sasl_mechanism="SCRAM-SHA-256",
                                        sasl_plain_username="bob", sasl_plain_password="wrong")
        # aiokafka 0.14.0 raises a bare KeyError('v'): its SCRAM code looks for the server's
        # final message's "v=" attribute, which an error reply lacks
        assert isinstance(error, Exception)
        # and no authentication at all is refused too (the connection is closed)
        assert isinstance(await kafka_start_fails(broker), KafkaConnectionError)
