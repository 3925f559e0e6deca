"""``create_bus``: one entry point from a URL or an import path to a bus."""

from __future__ import annotations

import difflib
import importlib
import re
from typing import Any, Callable
from urllib.parse import urlsplit

from busmon.bus.connection import KAFKA_SECRETS, NATS_SECRETS, merge_userinfo, parse_target
from busmon.bus.errors import BusConfigError
from busmon.bus.protocol import EventBus
from busmon.bus.secrets import redact_url, register_options, resolve_env

SCHEMES = ("memory", "kafka", "nats", "nats+js", "faststream+kafka", "faststream+nats", "faststream+nats+js",
           "raw+kafka", "raw+nats")
#: the default port of each broker scheme
DEFAULT_PORTS = {"kafka": 9092, "nats": 4222, "nats+js": 4222, "faststream+kafka": 9092,
                 "faststream+nats": 4222, "faststream+nats+js": 4222, "raw+kafka": 9092, "raw+nats": 4222}


def load_factory(path: str) -> Callable[..., Any]:
    """Import ``package.module:factory`` and return the callable."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise BusConfigError(f"{path!r}: expected an import path 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BusConfigError(f"{path!r}: cannot import module {module_name!r}: {exc}") from None
    obj: Any = module
    for name in attr.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise BusConfigError(f"{path!r}: module {module_name!r} has no {attr!r}") from None
    if not callable(obj):
        raise BusConfigError(f"{path!r}: {attr!r} is not callable")
    return obj


def is_import_path(target: str) -> bool:
    return "://" not in target and ":" in target


def check_target(url: str, /, **options: Any) -> None:
    """Raise :class:`BusConfigError` if ``url`` and ``options`` could not make a bus.

    A built-in bus is constructed (which connects nothing) to check its options;
    a user's factory is only imported, since calling it might do anything.
    """
    if is_import_path(url):
        factory = load_factory(url)
        if isinstance(factory, type):  # a class can be checked without being called
            if missing := _missing_methods(factory):
                raise BusConfigError(f"{url!r}: {factory.__name__} lacks {', '.join(missing)} (a bus needs "
                                     f"{', '.join(BUS_METHODS)}: see the README, Plug in your own bus)")
        _check_call(url, factory, options)
        return
    create_bus(url, **options)


def _check_call(url: str, factory: Callable[..., Any], options: dict[str, Any]) -> None:
    """Refuse a factory that cannot be called with the scenario's options (``json:dumps`` needs
    an argument busmon never gives): a configuration error, found before the first run, not the
    same TypeError in every run. Its signature is checked; the factory is not called."""
    import inspect

    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to read (some builtins): found when called
        return
    try:
        signature.bind(**options)
    except TypeError as exc:
        m = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
        if m:
            raise BusConfigError(f"{url!r} takes no option {m.group(1)!r}", option=m.group(1)) from None
        given = f"the options {', '.join(sorted(options))}" if options else "no arguments"
        raise BusConfigError(f"{url!r} cannot make a bus: busmon calls it with {given}, but it needs more "
                             f"({exc})") from None


#: what busmon calls on a bus
BUS_METHODS = ("start", "publish", "subscribe", "close")


def _missing_methods(bus: Any) -> list[str]:
    return [m for m in BUS_METHODS if not callable(getattr(bus, m, None))]


_BACKEND_MODULES = {"memory": "busmon.bus.memory", "kafka": "busmon.bus.kafka", "nats": "busmon.bus.nats",
                    "nats+js": "busmon.bus.nats", "faststream+kafka": "faststream.kafka",
                    "faststream+nats": "faststream.nats", "faststream+nats+js": "faststream.nats",
                    "raw+kafka": "aiokafka", "raw+nats": "nats"}
#: what a backend's library imports lazily, on first use (FastStream: anyio's asyncio backend)
_LAZY_MODULES = {"faststream+kafka": ("anyio._backends._asyncio",), "faststream+nats": ("anyio._backends._asyncio",),
                 "faststream+nats+js": ("anyio._backends._asyncio",)}


def preload(url: str) -> None:
    """Import the code a bus for ``url`` runs (its client library too), without making one:
    a first import takes hundreds of milliseconds, and done inside a measured phase it would
    show as the bus blocking its event loop. Errors are left for ``create_bus`` to report."""
    try:
        if is_import_path(url):
            load_factory(url)
        elif (module := _BACKEND_MODULES.get(scheme := urlsplit(url).scheme if "://" in url else "")) is not None:
            for name in (module, *_LAZY_MODULES.get(scheme, ())):
                importlib.import_module(name)
    except Exception:
        return


def known_options(scheme: str) -> list[str]:
    """The option names a built-in bus takes (its own and BaseBus's, and ``<secret>_env``)."""
    import inspect

    from busmon.bus.base import BaseBus

    classes: list[type] = [BaseBus]
    secrets: tuple[str, ...] = ()
    if scheme.startswith("faststream+"):
        from busmon.bus.faststream_bus import FastStreamBus
        from busmon.bus.thin import ThinBus

        classes = [ThinBus, FastStreamBus]
    elif scheme.startswith("raw+"):
        from busmon.bus.raw_clients import RawKafkaBus, RawNatsBus
        from busmon.bus.thin import ThinBus

        classes = [ThinBus, RawKafkaBus if scheme == "raw+kafka" else RawNatsBus]
    elif scheme == "memory":
        from busmon.bus.memory import MemoryBus

        classes.append(MemoryBus)
    elif scheme == "kafka":
        from busmon.bus.kafka import KafkaBus

        classes.append(KafkaBus)
        secrets = KAFKA_SECRETS
    elif scheme in ("nats", "nats+js"):
        from busmon.bus.nats import JetStreamBus, NatsBus

        classes += [NatsBus, JetStreamBus] if scheme == "nats+js" else [NatsBus]
        secrets = NATS_SECRETS
    names = {p.name for cls in classes for p in inspect.signature(cls.__init__).parameters.values()
             if p.kind is p.KEYWORD_ONLY}
    return sorted(names | {f"{s}_env" for s in secrets})


def create_bus(url: str = "memory://", /, **options: Any) -> EventBus:
    """A bus for ``memory://``, ``kafka://h:p[,h:p]``, ``nats://h:p``, ``nats+js://h:p``
    or ``package.module:factory`` (a user's own bus, called with ``options``, whatever they are
    called: ``url`` is positional-only so an option of that name reaches the factory untouched).

    Credentials come from the URL's userinfo or the options (``password``, or ``password_env``
    naming an environment variable); a user's factory gets its options untouched, but the values
    of its secret-named ones are registered so that busmon never shows them."""
    if is_import_path(url):
        register_options(options)
        bus = load_factory(url)(**options)
        if missing := _missing_methods(bus):
            raise BusConfigError(f"{url!r} returned {type(bus).__name__}, which lacks {', '.join(missing)}")
        return bus
    scheme = urlsplit(url).scheme if "://" in url else ""
    try:
        if scheme == "memory":
            from busmon.bus.memory import MemoryBus

            return MemoryBus(**options)
        if scheme == "kafka":
            from busmon.bus.kafka import KafkaBus

            target = parse_target(url, 9092)
            options = resolve_env(merge_userinfo(target, options), KAFKA_SECRETS)
            return KafkaBus(target.addresses(), **options)
        if scheme.startswith("faststream+") and scheme in SCHEMES:
            from busmon.bus.faststream_bus import FastStreamBus

            target = parse_target(url, DEFAULT_PORTS[scheme])
            if target.user or target.password:
                raise BusConfigError(f"{scheme}://: credentials are not supported on the FastStream backends")
            prefix = "" if scheme == "faststream+kafka" else "nats://"
            return FastStreamBus(scheme, [f"{prefix}{a}" for a in target.addresses().split(",")], **options)
        if scheme in ("raw+kafka", "raw+nats"):
            from busmon.bus.raw_clients import RawKafkaBus, RawNatsBus

            target = parse_target(url, DEFAULT_PORTS[scheme])
            if target.user or target.password:
                raise BusConfigError(f"{scheme}://: credentials are not supported on the raw-client backends")
            if scheme == "raw+kafka":
                return RawKafkaBus(target.addresses().split(","), **options)
            return RawNatsBus([f"nats://{a}" for a in target.addresses().split(",")], **options)
        if scheme in ("nats", "nats+js"):
            from busmon.bus.nats import JetStreamBus, NatsBus

            target = parse_target(url, 4222)
            options = resolve_env(merge_userinfo(target, options, token_scheme=True), NATS_SECRETS)
            servers = [f"nats://{a}" for a in target.addresses().split(",")]
            return (JetStreamBus if scheme == "nats+js" else NatsBus)(servers, **options)
    except TypeError as exc:  # an unknown option
        m = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
        if m:
            name = m.group(1)
            hint = difflib.get_close_matches(name, known_options(scheme), n=1, cutoff=0.7)
            raise BusConfigError(f"unknown option {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""),
                                 option=name) from None
        raise BusConfigError(f"an option of the wrong type: {exc}", option="?") from None
    except BusConfigError:  # the URL itself
        raise
    except ValueError as exc:  # an impossible value
        m = re.match(r"(\w+) must", str(exc))
        raise BusConfigError(str(exc), option=m.group(1) if m else "?") from None
    raise BusConfigError(
        f"{redact_url(url)!r}: unknown bus; expected one of {', '.join(s + '://' for s in SCHEMES)} "
        "or an import path 'package.module:factory'"
    )
