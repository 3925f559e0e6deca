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
import struct
from dataclasses import dataclass
from urllib.parse import urlsplit

from bus.errors import BusConfigError

REFUSED, SILENT, UP, UNRESOLVED = "unreachable", "not responding", "up", "unresolvable"

_DEFAULT_PORTS = {"kafka": 9092, "nats": 4222, "nats+js": 4222}
# ApiVersions (key 18) v0, correlation id 1, client id "busmon-health"
_CLIENT_ID = b"busmon-health"
_KAFKA_API_VERSIONS = struct.pack(">hhih", 18, 0, 1, len(_CLIENT_ID)) + _CLIENT_ID
_KAFKA_REQUEST = struct.pack(">i", len(_KAFKA_API_VERSIONS)) + _KAFKA_API_VERSIONS


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
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in _DEFAULT_PORTS:
        return "", []
    out = []
    for part in parts.netloc.rpartition("@")[2].split(","):
        host, sep, port = part.rpartition(":")
        if not sep:
            host, port = part, str(_DEFAULT_PORTS[scheme])
        if not port.isdigit():
            raise BusConfigError(f"{scheme}: expected host:port, got {part!r}")
        out.append((host.strip("[]"), int(port)))
    return scheme, out


async def check_broker(url: str, timeout: float = 1.0) -> list[BrokerHealth]:
    """Look at every broker address of ``url`` at once; empty when ``url`` names no broker."""
    scheme, addresses = broker_addresses(url)
    return list(await asyncio.gather(*(_check(scheme, h, p, timeout) for h, p in addresses)))


async def _check(scheme: str, host: str, port: int, timeout: float) -> BrokerHealth:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    writer = None
    try:
        async with asyncio.timeout(timeout):
            try:
                reader, writer = await asyncio.open_connection(host, port)
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
