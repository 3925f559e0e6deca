"""Where a busmon server listens: ``HOST:PORT``, loopback unless asked otherwise.

busmon's pages and metrics have no login, so an address other machines can reach is only
used when the person says so (``--metrics-public``, ``busmon serve --public``); a mistake is
one line naming the option and what it expected.
"""

from __future__ import annotations

import errno
import ipaddress
import socket


class ListenAddressError(ValueError):
    """An address busmon will not listen on: the one-line reason (exit 2)."""


LOOPBACK = "127.0.0.1"


def addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses ``host`` names (an address is itself; a name is resolved): [] for none."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is this machine's loopback."""
    found = addresses(host)
    return bool(found) and all(a.is_loopback for a in found)


def listen_failure(exc: OSError) -> str:
    """Why a bind failed, in words (the usual one said plainly)."""
    return "the port is in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))


def check_host(option: str, host: str, public: bool, public_flag: str) -> str:
    """``host`` if busmon may listen there: loopback, or anything when ``public``."""
    if not host:
        raise ListenAddressError(f"{option}: expected a host name or address, got nothing")
    found = addresses(host)
    if not found:
        raise ListenAddressError(f"{option} {host}: no such host (it does not resolve to an address)")
    if not public and not all(a.is_loopback for a in found):
        raise ListenAddressError(f"{option} {host}: not a loopback address, and what busmon serves has no "
                                 f"login; add {public_flag} to serve it to other machines")
    return host.strip("[]")


def parse_listen(option: str, text: str, *, public: bool = False, public_flag: str = "--public") -> tuple[str, int]:
    """``PORT``, ``:PORT``, ``HOST:PORT`` or ``[IPV6]:PORT`` → (host, port); loopback by default."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    if host.count(":") and not host.startswith("["):
        raise ListenAddressError(f"{option} {text}: expected HOST:PORT (an IPv6 address in brackets: [::1]:9464)")
    try:
        port = int(port_text)
    except ValueError:
        raise ListenAddressError(f"{option} {text}: expected HOST:PORT or PORT, with PORT a number "
                                 "(0: any free port)") from None
    if not 0 <= port <= 65535:
        raise ListenAddressError(f"{option} {text}: expected a port from 0 to 65535, got {port}")
    return check_host(option, host or LOOPBACK, public, public_flag), port


def url_host(host: str) -> str:
    """``host`` as a URL writes it (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host
