"""Real *secured* brokers on free loopback ports, for tests of busmon's secured-broker support.

- :func:`make_certs` makes a throw-away test CA (trustme) with a server and a
  client certificate, plus a second, unrelated CA that nothing trusts.
- :func:`nats_secured` runs nats-server from a generated config file with one
  auth mode (user+password, token or nkey) and/or TLS (optionally mutual).
- :func:`tansu_tls` runs Tansu behind :mod:`tests.tls_proxy` (Tansu 0.6.0
  cannot terminate TLS itself; see that module's docstring).
- :func:`tansu_authenticated` runs Tansu with SASL authentication required.

Every broker is waited for by polling its port with a deadline and stopped
when the ``with`` block ends, as in :mod:`tests.brokers`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import nkeys
import trustme

from tests.brokers import (HOST, Broker, _serve, free_port, nats_server_binary, tansu_binary,
                           wait_for_port)

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Certs:
    ca_file: Path  # the trusted test CA (PEM)
    server_cert: Path  # issued for "127.0.0.1" and "localhost" (PEM chain)
    server_key: Path
    client_cert: Path  # a client certificate from the same CA, for mutual TLS
    client_key: Path
    other_ca_file: Path  # a second, unrelated CA: "untrusted"


def make_certs(directory: Path) -> Certs:
    directory = Path(directory)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("busmon-client")
    certs = Certs(
        ca_file=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca_file=directory / "other-ca.pem",
    )
    ca.cert_pem.write_to_path(certs.ca_file)
    for issued, cert_path, key_path in ((server, certs.server_cert, certs.server_key),
                                        (client, certs.client_cert, certs.client_key)):
        cert_path.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(key_path)
    trustme.CA().cert_pem.write_to_path(certs.other_ca_file)
    return certs


@dataclass
class SecuredBroker(Broker):
    """A broker made of several processes: ``proc`` is the broker itself, ``extra_procs``
    the helpers in front of it (the TLS proxy), stopped first."""

    extra_procs: list[subprocess.Popen] = field(default_factory=list)

    def stop(self) -> None:
        for proc in self.extra_procs:
            _terminate(proc)
        super().stop()


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- NATS ---------------------------------------------------------------------------------------

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _quote(value: str | Path) -> str:
    """A double-quoted string for nats-server's config format.

    Its escapes are JSON-like but fewer: only \\xXX, \\t, \\n, \\r, \\" and \\\\ (JSON's
    \\uXXXX, \\b and \\f are parse errors), so other control characters become \\xXX and
    everything else is written as is (UTF-8). Inside double quotes ``$`` is not a variable
    reference and ``#`` starts no comment (the tests check this with such a password)."""
    def escape(ch: str) -> str:
        if ch in _ESCAPES:
            return _ESCAPES[ch]
        return f"\\x{ord(ch):02x}" if ord(ch) < 0x20 or ch == "\x7f" else ch

    return '"' + "".join(map(escape, str(value))) + '"'


def nkey_user(directory: Path) -> tuple[str, Path]:
    """A fresh NATS user nkey: its public key ("U...") and a file holding its seed ("SU...")."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = Path(directory) / f"{public[:12]}.nk"
    seed_file.write_bytes(seed + b"\n")
    seed_file.chmod(0o600)
    return public, seed_file


def nats_config(port: int, store_dir: Path, certs: Certs | None, *, user: str | None = None,
                password: str | None = None, token: str | None = None,
                nkey_public: str | None = None, tls: bool = False,
                verify_clients: bool = False) -> str:
    if (user is None) != (password is None):
        raise ValueError("user and password go together")
    modes = [mode for mode, on in (("user+password", user is not None), ("token", token is not None),
                                   ("nkey", nkey_public is not None)) if on]
    if len(modes) > 1:
        raise ValueError(f"one auth mode at a time, not {' and '.join(modes)}")
    if (tls or verify_clients) and certs is None:
        raise ValueError("TLS needs certs")
    if verify_clients and not tls:
        raise ValueError("verify_clients needs tls=True")
    lines = [f"host: {_quote(HOST)}", f"port: {port}",
             f"jetstream {{ store_dir: {_quote(store_dir)} }}"]
    if user is not None:
        lines.append(f"authorization {{ user: {_quote(user)}, password: {_quote(password)} }}")
    elif token is not None:
        lines.append(f"authorization {{ token: {_quote(token)} }}")
    elif nkey_public is not None:
        lines.append(f"authorization {{ users = [ {{ nkey: {_quote(nkey_public)} }} ] }}")
    if tls:
        assert certs is not None
        block = [f"cert_file: {_quote(certs.server_cert)}", f"key_file: {_quote(certs.server_key)}"]
        if verify_clients:
            block += [f"ca_file: {_quote(certs.ca_file)}", "verify: true"]
        lines.append("tls {\n  " + "\n  ".join(block) + "\n}")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def nats_secured(certs: Certs | None, *, user: str | None = None, password: str | None = None,
                 token: str | None = None, nkey_public: str | None = None, tls: bool = False,
                 verify_clients: bool = False) -> Iterator[Broker]:
    """nats-server with JetStream and at most one auth mode, optionally TLS (mutual with
    ``verify_clients``). The yielded url is ``nats://127.0.0.1:PORT``, never with credentials."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="busmon-nats-secured-") as tmp:
        config = Path(tmp) / "nats.conf"
        config.write_text(nats_config(port, Path(tmp) / "js", certs, user=user, password=password,
                                      token=token, nkey_public=nkey_public, tls=tls,
                                      verify_clients=verify_clients))
        with _serve([nats_server_binary(), "-c", str(config)], port,
                    f"nats://{HOST}:{port}") as broker:
            yield broker


# -- Tansu --------------------------------------------------------------------------------------

def _tansu_args(listen_port: int, advertised_port: int, *extra: str) -> list[str]:
    return [tansu_binary(), "broker",
            "--listener-url", f"tcp://{HOST}:{listen_port}",
            "--advertised-listener-url", f"tcp://{HOST}:{advertised_port}",
            "--storage-engine", "memory://tansu/", "--silent", *extra]


@contextlib.contextmanager
def tansu_tls(certs: Certs, *, verify_clients: bool = False) -> Iterator[SecuredBroker]:
    """Tansu on a plaintext internal port behind :mod:`tests.tls_proxy`, advertising the proxy.

    Clients connect to ``url``/``port`` (the proxy) with SSL; with ``verify_clients`` they
    must present a certificate from ``certs.ca_file`` (mutual TLS). ``proc`` is Tansu,
    ``extra_procs[0]`` the proxy; the proxy is stopped first."""
    internal, proxy_port = free_port(), free_port()
    with _serve(_tansu_args(internal, proxy_port), internal, f"kafka://{HOST}:{internal}") as inner:
        proxy_args = [sys.executable, "-m", "tests.tls_proxy", "--listen-port", str(proxy_port),
                      "--target-port", str(internal), "--cert", str(certs.server_cert),
                      "--key", str(certs.server_key)]
        if verify_clients:
            proxy_args += ["--client-ca", str(certs.ca_file)]
        # stderr is inherited, so the proxy's handshake-failure lines show in pytest's report
        proxy = subprocess.Popen(proxy_args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
        broker = SecuredBroker(f"kafka://{HOST}:{proxy_port}", proxy_port, inner.proc,
                               extra_procs=[proxy])
        try:
            wait_for_port(proxy_port, proxy)
            yield broker
        finally:
            _terminate(proxy)


@contextlib.contextmanager
def tansu_authenticated() -> Iterator[Broker]:
    """Tansu with ``--authentication``: every client must authenticate with SASL.

    With Tansu 0.6.0's in-memory storage no user can be created while authentication is
    on (``tansu user create`` is refused with NotAuthenticated), so no credentials are
    right: this broker only serves to test that WRONG credentials are refused."""
    port = free_port()
    with _serve(_tansu_args(port, port, "--authentication"), port,
                f"kafka://{HOST}:{port}") as broker:
        yield broker
