"""Secrets never shown: where they enter, they are noted; wherever text leaves, it is scrubbed.

A password reaches busmon in a URL (``kafka://bob:pw@host``), an option (``password``,
``token``), or an environment variable (``password_env = "KAFKA_PASSWORD"``). It can leave
in many ways that busmon does not write itself: a client library's log line, an exception's
text, a custom bus's error message. So redaction is done twice:

* **at the source**: a target is shown as ``kafka://bob:***@host:port`` (:func:`redact_url`), an
  option table with its secret-named values replaced (:func:`redact_options`);
* **at every exit**: every secret busmon was given is registered here (with the forms it takes
  when quoted for a URL, JSON, HTML/SVG), and :func:`scrub` replaces each with ``***`` in any
  text about to be printed, logged, drawn or written.

The registry is process-wide on purpose: the exits (log handlers, report writers, the
terminal) do not know which bus a line came from, and a secret seen once must never be shown
by anything in this process afterwards.
"""

from __future__ import annotations

import html
import json
import os
import re
import threading
from typing import Any, Iterable, Mapping
from urllib.parse import quote, quote_plus, unquote, urlsplit

from busmon.bus.errors import BusConfigError

MASK = "***"

#: words that make an option name a secret's (``password``, ``sasl_plain_password``, ``api_key``,
#: ``auth_token``, ``client_secret``, ``credentials``); ``keys`` (a count) and ``key_file`` (a
#: path) are not secrets, but a path is harmless to hide, so any ``key`` word counts
_SECRET_WORDS = {"password", "passwd", "pass", "pwd", "token", "secret", "key", "credentials",
                 "credential", "creds", "passphrase", "seed"}
_SECRET_SUFFIXES = ("password", "token", "secret", "passphrase")
#: secrets this short would make scrubbing mangle ordinary words: they are hidden where they
#: are known to stand (URL userinfo, secret-named options), not searched for in free text
MIN_SCRUB_LEN = 4
#: words busmon itself prints (verdicts, states, phases, backends, table headings): a password
#: that is one of them (a dev broker's kafka/kafka) is hidden where it stands, but not searched
#: for in free text, where masking every "clean" or "kafka" would break the output and, by
#: where the *** sits, tell the password
PUBLIC_WORDS = frozenset("""
    clean leaked failed exited ignored destroyed stalled stall stalls retained interrupted refused
    verdict error fault deadline baseline create subscribe load hold close settle settled naive
    memory kafka nats nats-js nats+js jetstream aiokafka busmon bus pool worker workers sampler session
    tasks task threads thread sockets socket processes process fds tcp udp unix pipe file files
    run runs low medium high extreme main warm-up quickstart ladder compare report summary phase phases
    sent received lost duplicated reordered published delivered latency publish deliver drift peak peaks
    none null true false yes no plaintext ssl sasl_ssl sasl_plaintext plain tls user token password
    """.split())


def is_secret_name(name: str) -> bool:
    """Does an option called ``name`` hold a secret? ``password``, ``token_env`` (the
    variable's name is not secret, but its value is looked up from it), ``api_key``..."""
    lowered = name.lower()
    if lowered.endswith(("_env", "_file", "_path", "_dir")):  # a variable's name, a path: not the secret
        return False
    words = [w for w in re.split(r"[^a-z0-9]+", lowered) if w]
    return any(w in _SECRET_WORDS or w.endswith(_SECRET_SUFFIXES) for w in words)


class SecretRegistry:
    """Every secret value seen in this process, in the forms it can be written in."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def register(self, *values: Any) -> None:
        """Note secret values (non-strings and short ones are ignored, see ``MIN_SCRUB_LEN``)."""
        forms = set()
        for value in values:
            if not isinstance(value, str) or len(value) < MIN_SCRUB_LEN or value.lower() in PUBLIC_WORDS:
                continue
            forms.update(_forms(value))
        forms = {f for f in forms if len(f) >= MIN_SCRUB_LEN}
        with self._lock:
            if forms <= self._forms:
                return
            self._forms |= forms
            # longest first, so a secret that contains another is replaced whole
            ordered = sorted(self._forms, key=len, reverse=True)
            # everywhere, even inside a word: a password that is also a word ("kafka") masks it in
            # free text too ("aio***"), which is ugly but never shows a secret glued to its text
            self._pattern = re.compile("|".join(re.escape(f) for f in ordered))

    def scrub(self, text: str) -> str:
        """``text`` with every registered secret, and every URL's password, replaced by ``***``."""
        pattern = self._pattern
        if pattern is not None:
            text = pattern.sub(MASK, text)
        if "@" in text:
            text = _URL_USERINFO.sub(_mask_userinfo, text)
        return text

    def clear(self) -> None:
        """Forget every secret (tests only: in a run, a secret once seen stays hidden)."""
        with self._lock:
            self._forms.clear()
            self._pattern = None

    def __len__(self) -> int:
        return len(self._forms)


def _forms(value: str) -> set[str]:
    """The ways ``value`` can appear in what busmon writes: as is, URL-quoted, JSON- and
    HTML-escaped (reports, SVG screenshots), with spaces as SVG's non-breaking spaces."""
    escaped = html.escape(value, quote=True)
    return {value, quote(value, safe=""), quote_plus(value, safe=""), json.dumps(value)[1:-1],
            escaped, html.escape(value, quote=False), escaped.replace(" ", "&#160;"),
            value.replace(" ", "\u00a0"), value.encode("unicode_escape").decode("ascii")}


SECRETS = SecretRegistry()

#: ``scheme://user:password@`` anywhere in free text (a library's message, an exception)
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^\s:/@]*):(?P<pw>[^\s/@]+)@")


def _mask_userinfo(m: re.Match[str]) -> str:
    return f"{m.group('scheme')}{m.group('user')}:{MASK}@"


def register(*values: Any) -> None:
    """Note secret values so that :func:`scrub` hides them from now on."""
    SECRETS.register(*values)


def scrub(text: str) -> str:
    """``text`` fit to show: every known secret and every URL password replaced by ``***``."""
    return SECRETS.scrub(text)


def scrub_tree(data: Any, keep: frozenset[str] = frozenset()) -> Any:
    """``data`` (JSON-like) with every string scrubbed, keys and the values of ``keep`` fields
    (busmon's own words: a verdict, a backend) left as they are, so a password that happens to
    be such a word cannot break a report's format."""
    if isinstance(data, str):
        return scrub(data)
    if isinstance(data, Mapping):
        return {k: v if k in keep else scrub_tree(v, keep) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [scrub_tree(v, keep) for v in data]
    return data


def redact_url(url: str) -> str:
    """``kafka://bob:***@host:9092``: the URL with its password (or a NATS token, which is
    userinfo without a colon) masked; anything that is not a URL with userinfo is unchanged."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    userinfo, at, hosts = rest.rpartition("@")  # to the last @, as bus.connection reads it
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    if colon:
        shown = f"{user}:{MASK}"
    elif scheme.startswith("nats"):
        shown = MASK  # nats://TOKEN@host: the lone userinfo is the token
    else:
        shown = user
    return f"{scheme}://{shown}@{hosts}"


def redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``options`` with every secret-named value (tables included) shown as ``***``."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, Mapping):
            out[key] = redact_options(value)
        elif is_secret_name(key) and value is not None:
            out[key] = MASK
        else:
            out[key] = value
    return out


def register_options(options: Mapping[str, Any]) -> None:
    """Register the values of every secret-named option (tables included)."""
    for key, value in options.items():
        if isinstance(value, Mapping):
            register_options(value)
        elif is_secret_name(key):
            register(value)


def userinfo(url: str) -> tuple[str | None, str | None]:
    """The URL-decoded user and password of ``url`` (``None`` where absent)."""
    netloc = urlsplit(url).netloc
    info, at, _ = netloc.rpartition("@")
    if not at:
        return None, None
    user, colon, password = info.partition(":")
    return unquote(user) or None, (unquote(password) if colon else None)


def resolve_env(options: Mapping[str, Any], names: Iterable[str],
                environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``password_env = "KAFKA_PASSWORD"`` becomes ``password = <its value>`` for each of ``names``.

    Raises :class:`BusConfigError` (naming ``<name>_env``) when the variable is not set or is
    empty, or when both ``<name>`` and ``<name>_env`` are given. The value is registered.
    """
    env = os.environ if environ is None else environ
    out = dict(options)
    for name in names:
        var_key = f"{name}_env"
        if var_key not in out:
            continue
        var = out.pop(var_key)
        if not isinstance(var, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
            raise BusConfigError(f"expected the name of an environment variable, got {var!r}", option=var_key)
        if out.get(name) is not None:
            raise BusConfigError(f"give {name} or {var_key}, not both", option=var_key)
        value = env.get(var)
        if not value:
            raise BusConfigError(f"environment variable {var} is {'empty' if value == '' else 'not set'}",
                                 option=var_key)
        register(value)
        out[name] = value
    return out


class ScrubbedStream:
    """A text stream that scrubs what is written to it before passing it on: the terminal's
    last line of defence (rich consoles print through it), for text busmon did not compose.

    ``target`` is a stream, or names the ``sys`` attribute (``"stdout"``, ``"stderr"``) looked
    up at each write, so a stream replaced later (by a test runner) is still the one written to.
    """

    def __init__(self, target: Any) -> None:
        self._target = target

    @property
    def stream(self) -> Any:
        import sys

        stream = getattr(sys, self._target) if isinstance(self._target, str) else self._target
        # rich's live display replaces sys.stderr with a proxy that prints back into the console
        # writing here: write to what it proxies (as rich's own Console.file does), or loop forever
        return getattr(stream, "rich_proxied_file", stream)

    def write(self, text: str) -> int:
        self.stream.write(scrub(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", "utf-8")
