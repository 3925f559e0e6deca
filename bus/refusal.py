"""Why a broker refused a connection, in one line a person can act on.

``kafka 127.0.0.1:9093: authentication failed (SCRAM-SHA-256, user bob)`` or ``nats
127.0.0.1:4222: TLS: the server's certificate is not trusted (unable to get local issuer
certificate)``, instead of "Unable to bootstrap", ``KeyError: 'v'`` or "nats: 'Authorization
Violation'". A refusal is final: the run fails at once (exit 3), no retry storm.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING

from busmon.bus.errors import BusRefusedError

if TYPE_CHECKING:
    from busmon.bus.connection import KafkaSecurity, NatsSecurity


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tls_reason(exc: BaseException) -> str | None:
    """``TLS: the server's certificate is not trusted (…)`` for a TLS failure, else None."""
    for err in _chain(exc):
        if isinstance(err, ssl.SSLCertVerificationError):
            return f"TLS: the server's certificate is not trusted ({err.verify_message or err.reason})"
        if isinstance(err, ssl.SSLError):
            reason = (err.reason or str(err)).replace("_", " ").lower()
            if "certificate required" in reason or "unknown ca" in reason or "bad certificate" in reason:
                return f"TLS: the server refused our client certificate ({reason})"
            return f"TLS handshake failed ({reason})"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


async def kafka_refusal(host: str, port: int, security: KafkaSecurity, client_id: str,
                        timeout: float) -> BusRefusedError | None:
    """Connect once with ``security`` and say why the broker refused, or None if it did not
    (the failure was something else: leave it to the caller's own message).

    Also the mismatches that otherwise read as a dead broker: TLS asked of a plaintext listener
    (the handshake hangs), plaintext sent to a TLS one (the connection drops), and no
    credentials where the broker wants them (it answers ApiVersions, then hangs up).
    """
    from aiokafka.conn import create_conn
    from aiokafka.errors import (IllegalSaslStateError, KafkaError, SaslAuthenticationFailed,
                                 UnsupportedSaslMechanismError)
    from aiokafka.protocol.metadata import MetadataRequest

    where = f"kafka {address(host, port)}"
    if security.context is not None and await kafka_answers_plaintext(host, port, min(timeout, 1.0)):
        return BusRefusedError(f"{where}: TLS was asked for ({security.protocol}), but the broker answers in "
                               "plaintext: leave out tls and the certificate files, or use its TLS listener")
    try:
        async with asyncio.timeout(timeout):
            conn = await create_conn(host, port, client_id=f"{client_id}-check",
                                     request_timeout_ms=int(timeout * 1000), **security.client_kwargs())
    except (TimeoutError, ConnectionRefusedError):
        return None
    except UnsupportedSaslMechanismError:
        return BusRefusedError(f"{where}: the broker does not offer SASL {security.mechanism} "
                               f"(security_protocol {security.protocol})")
    except (SaslAuthenticationFailed, IllegalSaslStateError, KeyError):
        # aiokafka's SCRAM client raises KeyError('v') when the server's final message is an
        # error (e=unknown-user, e=invalid-proof) instead of a verifier
        return BusRefusedError(f"{where}: authentication failed ({security.mechanism}, user {security.user})")
    except (OSError, KafkaError) as exc:
        if (reason := tls_reason(exc)) is not None:
            return BusRefusedError(f"{where}: {reason}")
        if security.context is not None and not security.client_cert and await answers_tls(host, port,
                                                                                           min(timeout, 1.0)):
            # TLS 1.3 sends "certificate required" after the handshake, and aiokafka only sees the
            # connection close
            return BusRefusedError(f"{where}: the broker closed the connection after the TLS handshake: it "
                                   "likely requires a client certificate (cert_file and key_file)")
        if security.context is None and await answers_tls(host, port, min(timeout, 1.0)):
            return BusRefusedError(f"{where}: the broker speaks TLS: set tls = true (or ca_file) "
                                   f"for security_protocol {'SASL_SSL' if security.mechanism else 'SSL'}")
        if security.mechanism is not None and await _answers_without_sasl(host, port, security, client_id, timeout):
            # the connection was dropped in the SASL exchange (a broker that does not offer the
            # mechanism may just hang up, as Tansu does for PLAIN)
            return BusRefusedError(f"{where}: authentication failed ({security.mechanism}, user {security.user}: "
                                   "the broker hung up; wrong credentials, or a mechanism it does not offer)")
        return None
    try:
        if security.mechanism is None:
            try:
                async with asyncio.timeout(timeout):
                    await conn.send(MetadataRequest([]))
            except (OSError, KafkaError, TimeoutError):
                return BusRefusedError(f"{where}: the broker hung up on a request without credentials: it wants "
                                       "SASL authentication (a user and password, and its sasl_mechanism)")
        return None
    finally:
        conn.close()


async def kafka_answers_plaintext(host: str, port: int, timeout: float) -> bool:
    """Does a Kafka broker answer a plaintext ApiVersions request here (its own correlation id
    back, not a TLS alert or a dropped connection)?"""
    from busmon.bus.health import KAFKA_API_VERSIONS_REQUEST

    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(KAFKA_API_VERSIONS_REQUEST)
            head = await reader.readexactly(8)
        return int.from_bytes(head[4:8], "big") == 1
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.close()


async def answers_tls(host: str, port: int, timeout: float) -> bool:
    """Does the listener complete a TLS handshake (whatever its certificate)?"""
    from busmon.bus.health import any_certificate

    writer = None
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port, ssl=any_certificate())
        return True
    except (OSError, TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()


async def _answers_without_sasl(host: str, port: int, security: KafkaSecurity, client_id: str,
                                timeout: float) -> bool:
    from aiokafka.conn import create_conn

    kwargs = security.client_kwargs()
    for key in ("sasl_mechanism", "sasl_plain_username", "sasl_plain_password"):
        kwargs.pop(key, None)
    kwargs["security_protocol"] = "SSL" if security.context is not None else "PLAINTEXT"
    try:
        async with asyncio.timeout(timeout):
            conn = await create_conn(host, port, client_id=f"{client_id}-check",
                                     request_timeout_ms=int(timeout * 1000), **kwargs)
    except Exception:
        return False
    conn.close()
    return True


def nats_refusal(exc: BaseException | None, host: str, port: int, security: NatsSecurity) -> BusRefusedError | None:
    """The refusal in the error nats-py reported while connecting, or None."""
    if exc is None:
        return None
    where = f"nats {address(host, port)}"
    if (reason := tls_reason(exc)) is not None:
        return BusRefusedError(f"{where}: {reason}")
    text = str(exc).lower()
    if "authorization violation" in text or "authentication" in text or type(exc).__name__ == "AuthorizationError":
        how = security.auth or "no credentials given"
        return BusRefusedError(f"{where}: authentication failed ({how})")
    return None
