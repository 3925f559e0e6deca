"""How a bus reaches its broker: the addresses of a URL, its credentials and TLS.

Settings come from the URL's userinfo (``kafka://bob:pw@host``, ``nats://TOKEN@host``) and from
options; they are checked when the bus is made (a missing certificate file, a user without a
password, SASL without a mechanism the client knows are one-line :class:`BusConfigError`\\ s
naming the option), so a run never starts with settings that cannot work.
"""

from __future__ import annotations

import importlib.util
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from busmon.bus.errors import BusConfigError
from busmon.bus.secrets import redact_url, register

KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: option names that hold secrets and may instead name an environment variable (``password_env``)
KAFKA_SECRETS = ("password", "key_password")
NATS_SECRETS = ("password", "token", "key_password")


@dataclass(frozen=True)
class Target:
    """A broker URL taken apart: scheme, addresses, and the URL-decoded userinfo."""

    scheme: str
    hosts: tuple[tuple[str, int], ...]
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def addresses(self) -> str:
        """``127.0.0.1:9092,127.0.0.1:9093``: what a client is given, never credentials."""
        return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)


def parse_target(url: str, default_port: int) -> Target:
    """Split ``scheme://[user[:password]@]host[:port][,host[:port]...]``; the secret is registered.

    The userinfo runs to the last ``@``, so a password may hold ``@ / # ?`` as typed (a URL
    parser would end it at the first ``/``, and show the rest as a host); ``%XX`` is decoded.
    """
    scheme, _, rest = url.partition("://")
    info, at, hosts_part = rest.rpartition("@")
    if at:
        name, colon, secret = info.partition(":")
        if colon:
            register(secret, unquote(secret))
        else:
            register(name, unquote(name))
    hosts_part = hosts_part.rstrip("/")
    if not hosts_part:
        raise BusConfigError(f"{_shown(url)}: expected host:port after '://'")
    user = password = None
    if at:  # registered above, before any error could show it (nats://TOKEN@host: the user is the token)
        user = unquote(name) or None
        password = unquote(secret) if colon else None
    hosts = []
    for part in hosts_part.split(","):
        host, sep, port = part.rpartition(":")
        if not sep or host.endswith(":") or (host.startswith("[") and not host.endswith("]")):
            host, port = part, str(default_port)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BusConfigError(f"{_shown(url)}: expected host:port, got {part!r}")
        hosts.append((host.strip("[]"), int(port)))
    return Target(scheme, tuple(hosts), user, password)


def _shown(url: str) -> str:
    return repr(redact_url(url))


def merge_userinfo(target: Target, options: dict[str, Any], *, token_scheme: bool = False) -> dict[str, Any]:
    """The URL's user and password (for NATS, a lone userinfo is the token unless a password
    option is given) added to
    ``options``; the same setting given in both places is an error, not a silent choice."""
    out = dict(options)
    given: dict[str, str | None] = {"user": target.user, "password": target.password}
    password_option = out.get("password") is not None or out.get("password_env") is not None
    if token_scheme and target.user is not None and target.password is None and not password_option:
        given = {"token": target.user}  # nats://TOKEN@host; nats://bob@host with a password option is a user
    for name, value in given.items():
        if value is None:
            continue
        for option in (name, f"{name}_env"):
            if out.get(option) is not None:
                raise BusConfigError(f"{name} is given both in the URL and as option {option}; give it once",
                                     option=option)
        out[name] = value
    return out


def _file(path: Any, option: str, what: str) -> str:
    if not isinstance(path, (str, Path)) or not str(path):
        raise BusConfigError(f"expected the path of {what}, got {path!r}", option=option)
    p = Path(path).expanduser()
    if p.is_dir():
        raise BusConfigError(f"{p} is a folder; expected {what}", option=option)
    if not p.is_file():
        raise BusConfigError(f"no such file: {p}", option=option)
    return str(p)


def tls_context(ca_file: Any = None, cert_file: Any = None, key_file: Any = None,
                key_password: str | None = None) -> ssl.SSLContext:
    """A client TLS context: the system's trusted CAs, or only ``ca_file``'s; a client
    certificate when ``cert_file`` is given (its key in ``key_file``, or in the same file)."""
    if key_file is not None and cert_file is None:
        raise BusConfigError("key_file needs cert_file (the client certificate it belongs to)",
                             option="key_file")
    ca = _file(ca_file, "ca_file", "a CA certificate file (PEM)") if ca_file is not None else None
    try:
        context = ssl.create_default_context(cafile=ca)
    except ssl.SSLError as exc:
        raise BusConfigError(f"{ca}: not a PEM CA certificate ({exc.reason or exc})", option="ca_file") from None
    if cert_file is not None:
        cert = _file(cert_file, "cert_file", "a client certificate file (PEM)")
        key = _file(key_file, "key_file", "a private key file (PEM)") if key_file is not None else None
        try:
            # a callable, never None: with None, OpenSSL asks for an encrypted key's passphrase
            # on the terminal (and, without one, fails with EINVAL after echoing the prompt)
            context.load_cert_chain(cert, key, password=key_password if key_password is not None else _no_passphrase)
        except _KeyEncrypted:
            raise BusConfigError(f"{key or cert}: the private key is encrypted; give key_password "
                                 "(or key_password_env)", option="key_file" if key else "cert_file") from None
        except ssl.SSLError as exc:
            if key_password is not None:
                raise BusConfigError(f"{key or cert}: cannot load the private key with this key_password "
                                     f"({exc.reason or exc}): a wrong password, or not the key of {Path(cert).name}",
                                     option="key_password") from None
            where = f"{cert} with {key}" if key else f"{cert} (no key_file: the key must be in the same file)"
            raise BusConfigError(f"cannot load the client certificate and its key from {where} "
                                 f"({exc.reason or exc})", option="cert_file" if key is None else "key_file") from None
    return context


class _KeyEncrypted(Exception):
    """OpenSSL asked for a passphrase that was not given."""


def _no_passphrase() -> bytes:
    raise _KeyEncrypted


def _text(value: Any, option: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BusConfigError(f"expected a string, got a {type(value).__name__}", option=option)
    if not value:
        raise BusConfigError("expected a non-empty string, got an empty one", option=option)
    return value


@dataclass(frozen=True)
class KafkaSecurity:
    """Kafka's ``security_protocol`` and what it needs: SASL user and password, TLS context."""

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    context: ssl.SSLContext | None = field(default=None, repr=False)
    client_cert: bool = False          # a client certificate is presented (mutual TLS)

    @classmethod
    def from_options(cls, *, security_protocol: Any = None, sasl_mechanism: Any = None, user: Any = None,
                     password: Any = None, ca_file: Any = None, cert_file: Any = None, key_file: Any = None,
                     key_password: Any = None, tls: Any = None) -> KafkaSecurity:
        """Infer what is not given: TLS when a certificate file or ``tls = true`` is, SASL when
        a user or mechanism is (PLAIN by default); refuse combinations that cannot work."""
        user, password = _text(user, "user"), _text(password, "password")
        register(password, key_password)
        if tls is not None and type(tls) is not bool:
            raise BusConfigError(f"expected true or false, got {tls!r}", option="tls")
        mechanism = None
        if sasl_mechanism is not None:
            mechanism = str(sasl_mechanism).upper()
            if mechanism not in KAFKA_MECHANISMS:
                raise BusConfigError(f"expected one of {', '.join(KAFKA_MECHANISMS)}, got {sasl_mechanism!r}",
                                     option="sasl_mechanism")
        wants_tls = bool(tls) or any(f is not None for f in (ca_file, cert_file, key_file))
        wants_sasl = user is not None or password is not None or mechanism is not None
        if security_protocol is None:
            protocol = {(False, False): "PLAINTEXT", (True, False): "SSL", (False, True): "SASL_PLAINTEXT",
                        (True, True): "SASL_SSL"}[(wants_tls, wants_sasl)]
        else:
            protocol = str(security_protocol).upper()
            if protocol not in KAFKA_PROTOCOLS:
                raise BusConfigError(f"expected one of {', '.join(KAFKA_PROTOCOLS)}, got {security_protocol!r}",
                                     option="security_protocol")
            if wants_sasl and not protocol.startswith("SASL_"):
                raise BusConfigError(f"a user, password or sasl_mechanism needs SASL_PLAINTEXT or SASL_SSL, "
                                     f"got {protocol}", option="security_protocol")
            if tls is False and protocol.endswith("SSL"):
                raise BusConfigError(f"tls = false, but security_protocol {protocol} is TLS", option="tls")
            if wants_tls and not protocol.endswith("SSL"):
                raise BusConfigError(f"TLS settings (tls, ca_file, cert_file) need SSL or SASL_SSL, got {protocol}",
                                     option="security_protocol")
        context = None
        if protocol.endswith("SSL"):
            context = tls_context(ca_file, cert_file, key_file, key_password)
        if protocol.startswith("SASL_"):
            mechanism = mechanism or "PLAIN"
            if user is None or password is None:
                if user is None and password is None:
                    got, option = "neither", "sasl_mechanism" if sasl_mechanism is not None else "security_protocol"
                else:
                    got = "only a password" if user is None else "only a user"
                    option = "password" if user is None else "user"
                raise BusConfigError(f"{protocol} with {mechanism} needs a user and a password, got {got} "
                                     "(both in the URL's user info, or as the user and password options)", option=option)
        return cls(protocol, mechanism, user, password, context, cert_file is not None and context is not None)

    @property
    def secured(self) -> bool:
        return self.protocol != "PLAINTEXT"

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for every aiokafka client (producer, consumer, admin)."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.context is not None:
            kwargs["ssl_context"] = self.context
        if self.mechanism is not None:
            kwargs.update(sasl_mechanism=self.mechanism, sasl_plain_username=self.user,
                          sasl_plain_password=self.password)
        return kwargs

    def describe(self) -> str:
        """``SASL_SSL, SCRAM-SHA-256, user bob`` (never the password)."""
        parts = [self.protocol]
        if self.mechanism is not None:
            parts += [self.mechanism, f"user {self.user}"]
        return ", ".join(parts)


_CREDS_JWT = re.compile(r"-{3,}BEGIN NATS USER JWT-{3,}\s*(\S+)\s*-{3,}END NATS USER JWT-{3,}")
_CREDS_SEED = re.compile(r"-{3,}BEGIN USER NKEY SEED-{3,}\s*(\S+)\s*-{3,}END USER NKEY SEED-{3,}")


def _check_nkey_file(path: str, option: str) -> None:
    """Read a ``.creds`` or NKey seed file now: its secrets are registered (never shown), and a
    file nats-py could not use is one line here, not a library's ``TypeError`` at connect."""
    import nkeys

    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BusConfigError(f"{path}: not a text file (a seed or .creds file is text)", option=option) from None
    except OSError as exc:
        raise BusConfigError(f"{path}: cannot read: {exc.strerror or exc}", option=option) from None
    if option == "credentials_file":
        jwt, seed = _CREDS_JWT.search(text), _CREDS_SEED.search(text)
        if jwt is None or seed is None:
            raise BusConfigError(f"{path}: not a NATS credentials file (expected its USER JWT and "
                                 "USER NKEY SEED blocks, as nsc writes them)", option=option)
        register(jwt.group(1))
        seed_text = seed.group(1)
    else:
        seed_text = text.strip()
    register(seed_text)
    try:
        nkeys.from_seed(seed_text.encode())
    except Exception:
        raise BusConfigError(f"{path}: not a valid NKey seed (a line starting SU…)", option=option) from None


@dataclass(frozen=True)
class NatsSecurity:
    """NATS credentials (one kind at most) and TLS, as nats-py's ``connect()`` takes them."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    credentials_file: str | None = None
    nkey_seed_file: str | None = None
    context: ssl.SSLContext | None = field(default=None, repr=False)

    @classmethod
    def from_options(cls, *, user: Any = None, password: Any = None, token: Any = None,
                     credentials_file: Any = None, nkey_seed_file: Any = None, ca_file: Any = None,
                     cert_file: Any = None, key_file: Any = None, key_password: Any = None,
                     tls: Any = None) -> NatsSecurity:
        user, password, token = _text(user, "user"), _text(password, "password"), _text(token, "token")
        register(password, token, key_password)
        if (user is None) != (password is None):
            given = "user" if password is None else "password"
            raise BusConfigError(f"user and password go together, got only a {given} (a lone secret in the "
                                 "URL, nats://TOKEN@host, is a token)", option=given)
        kinds = [name for name, value in (("user", user), ("token", token), ("credentials_file", credentials_file),
                                          ("nkey_seed_file", nkey_seed_file)) if value is not None]
        if len(kinds) > 1:
            raise BusConfigError(f"one kind of credentials at a time, got {' and '.join(kinds)}", option=kinds[1])
        creds = _file(credentials_file, "credentials_file", "a NATS credentials file (.creds)") \
            if credentials_file is not None else None
        seed = _file(nkey_seed_file, "nkey_seed_file", "an NKey seed file") if nkey_seed_file is not None else None
        if creds or seed:
            if importlib.util.find_spec("nkeys") is None:  # nats-py signs the server's nonce with it
                raise BusConfigError("NATS credentials and NKeys need the nkeys package: pip install nkeys",
                                     option=kinds[0])
            _check_nkey_file(creds, "credentials_file") if creds else _check_nkey_file(seed, "nkey_seed_file")
        if tls is not None and type(tls) is not bool:
            raise BusConfigError(f"expected true or false, got {tls!r}", option="tls")
        context = None
        if tls or any(f is not None for f in (ca_file, cert_file, key_file)):
            if tls is False:
                raise BusConfigError("tls = false with TLS files (ca_file, cert_file, key_file)", option="tls")
            context = tls_context(ca_file, cert_file, key_file, key_password)
        return cls(user, password, token, creds, seed, context)

    @property
    def auth(self) -> str | None:
        """What kind of credentials, as a person would say it: ``user bob``, ``token``..."""
        if self.user is not None:
            return f"user {self.user}"
        if self.token is not None:
            return "token"
        if self.credentials_file is not None:
            return f"credentials file {Path(self.credentials_file).name}"
        if self.nkey_seed_file is not None:
            return f"nkey seed file {Path(self.nkey_seed_file).name}"
        return None

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for nats-py's ``Client.connect``."""
        kwargs: dict[str, Any] = {}
        if self.user is not None:
            kwargs.update(user=self.user, password=self.password)
        if self.token is not None:
            kwargs["token"] = self.token
        if self.credentials_file is not None:
            kwargs["user_credentials"] = self.credentials_file
        if self.nkey_seed_file is not None:
            kwargs["nkeys_seed"] = self.nkey_seed_file
        if self.context is not None:
            kwargs["tls"] = self.context
        return kwargs
