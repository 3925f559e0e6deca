"""Is the broker there? One quick look, to say *what* happened when a run fails.

A failing call says little ("KafkaTimeoutError", "did not return within 5 s"); the
person wants to know whether the broker is gone (connection refused), stopped or
wedged (accepts connections, answers nothing), or up (then the bus is at fault).
The look is a fresh TCP connection to each address of the bus URL and the
protocol's first words: NATS greets with ``INFO``; Kafka answers an ApiVersions
request. Bounded by ``timeout`` per address; loopback or wherever the URL points.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from dataclasses import dataclass
from urllib.parse import urlsplit

from busmon.bus.connection import parse_target

REFUSED, SILENT, UP, UNRESOLVED = "unreachable", "not responding", "up", "unresolvable"

_DEFAULT_PORTS = {"kafka": 9092, "nats": 4222, "nats+js": 4222,
                  "faststream+kafka": 9092, "faststream+nats": 4222, "faststream+nats+js": 4222,
                  "raw+kafka": 9092, "raw+nats": 4222}
# ApiVersions (key 18) v0, correlation id 1, client id "busmon-health"
_CLIENT_ID = b"busmon-health"
_KAFKA_API_VERSIONS = struct.pack(">hhih", 18, 0, 1, len(_CLIENT_ID)) + _CLIENT_ID
KAFKA_API_VERSIONS_REQUEST = _KAFKA_REQUEST = struct.pack(">i", len(_KAFKA_API_VERSIONS)) + _KAFKA_API_VERSIONS


@dataclass(frozen=True)
class BrokerHealth:
    scheme: str          # kafka | nats | nats+js
    address: str         # host:port (no credentials)
    status: str          # unreachable | not responding | up | unresolvable
    detail: str          # e.g. "connection refused", "no answer within 1 s"

    @property
    def down(self) -> bool:
        return self.status != UP

    def describe(self) -> str:
        """``kafka 127.0.0.1:9092 unreachable (connection refused)``"""
        return f"{self.scheme} {self.address} {self.status} ({self.detail})"


def broker_addresses(url: str) -> tuple[str, list[tuple[str, int]]]:
    """The scheme and ``(host, port)`` pairs of a broker URL; ``("", [])`` for other targets."""
    if "://" not in url:
        return "", []
    scheme = urlsplit(url).scheme
    if scheme not in _DEFAULT_PORTS:
        return "", []
    return scheme, list(parse_target(url, _DEFAULT_PORTS[scheme]).hosts)


async def check_broker(url: str, timeout: float = 1.0, *, tls: bool = False) -> list[BrokerHealth]:
    """Look at every broker address of ``url`` at once; empty when ``url`` names no broker.

    With ``tls`` (a Kafka listener that speaks only TLS) a completed TLS handshake is the
    answer: whether its certificate is trusted is the bus's business, not this look's.
    """
    scheme, addresses = broker_addresses(url)
    return list(await asyncio.gather(*(_check(scheme, h, p, timeout, tls) for h, p in addresses)))


def any_certificate() -> ssl.SSLContext:
    """A TLS client context that completes a handshake whatever the certificate: for looking
    whether something answers TLS, never for carrying data."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _check(scheme: str, host: str, port: int, timeout: float, tls: bool = False) -> BrokerHealth:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    writer = None
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(host, port)
                if tls and scheme == "kafka":  # NATS greets in plaintext, then upgrades
                    await writer.start_tls(any_certificate())
                    return BrokerHealth(scheme, address, UP, "answers TLS")
            except ssl.SSLError as exc:
                return BrokerHealth(scheme, address, UP, f"answers, TLS handshake failed: {exc.reason or exc}")
            except ConnectionRefusedError:
                return BrokerHealth(scheme, address, REFUSED, "connection refused")
            except OSError as exc:
                if "Name or service not known" in str(exc) or "nodename" in str(exc):
                    return BrokerHealth(scheme, address, UNRESOLVED, str(exc))
                return BrokerHealth(scheme, address, REFUSED, exc.strerror or str(exc))
            if scheme == "kafka":
                writer.write(_KAFKA_REQUEST)
            first = await reader.read(4)
        if not first:
            return BrokerHealth(scheme, address, REFUSED, "closed the connection at once")
        return BrokerHealth(scheme, address, UP, "answers")
    except TimeoutError:
        what = "no answer" if writer is not None else "no connection"
        return BrokerHealth(scheme, address, SILENT, f"{what} within {timeout:g} s")
    except OSError as exc:
        return BrokerHealth(scheme, address, REFUSED, exc.strerror or str(exc))
    finally:
        if writer is not None:
            writer.close()
            try:
                async with asyncio.timeout(timeout):
                    await writer.wait_closed()
            except (TimeoutError, OSError):
                pass
