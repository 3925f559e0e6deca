"""busmon: whether an event-bus client really cleans up after itself, judged by identity.

One import for what users touch::

    from busmon import watch, LeakError          # the verdict around your own code
    from busmon import create_bus, Envelope      # busmon's embedded bus
    from busmon import EventBus, Subscription    # the adapter protocol, for your own bus

The parts live in ``busmon.bus`` (the embedded bus), ``busmon.probes`` (what is measured and
judged) and ``busmon.tui`` (the command line and the dashboard). Names here are loaded on first
use, so ``import busmon`` (the pytest plugin does it in every session) imports no bus client,
no probe and no UI.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# In a source checkout the parts sit beside this folder (bus/, probes/, tui/ at the top, the
# project's layout); installed, they are inside it. Both import as busmon.bus, busmon.probes…
_HERE = os.path.dirname(os.path.abspath(__file__))
if not os.path.isdir(os.path.join(_HERE, "bus")):
    __path__.append(os.path.dirname(_HERE))  # noqa: F821  (a package's __path__)

#: public name → the module that defines it
_EXPORTS = {
    # the verdict around your own code
    "watch": "busmon.probes.watching.watch",
    "WatchOptions": "busmon.probes.watching.watch_options",
    "WatchOptionError": "busmon.probes.watching.watch_options",
    "WatchResult": "busmon.probes.verdict.watch_result",
    "LeakError": "busmon.probes.watching.watch",
    "LeakWarning": "busmon.probes.watching.watch",
    "StallError": "busmon.probes.watching.watch",
    "StallWarning": "busmon.probes.watching.watch",
    # the embedded bus
    "create_bus": "busmon.bus.factory",
    "load_factory": "busmon.bus.factory",
    "Envelope": "busmon.bus.envelope",
    "encode": "busmon.bus.codec",
    "decode": "busmon.bus.codec",
    "DecodeError": "busmon.bus.codec",
    "BusCounters": "busmon.bus.counters",
    # the adapter protocol
    "EventBus": "busmon.bus.protocol",
    "Subscription": "busmon.bus.protocol",
    "Handler": "busmon.bus.protocol",
    # what a bus raises
    "BusError": "busmon.bus.errors",
    "BusConfigError": "busmon.bus.errors",
    "BusConnectError": "busmon.bus.errors",
    "BusClosedError": "busmon.bus.errors",
    "BusCloseError": "busmon.bus.errors",
    "BusFault": "busmon.bus.errors",
    "BusRefusedError": "busmon.bus.errors",
}

__all__ = ["BusCloseError", "BusClosedError", "BusConfigError", "BusConnectError", "BusCounters",
           "BusError", "BusFault", "BusRefusedError", "DecodeError", "Envelope", "EventBus", "Handler",
           "LeakError", "LeakWarning", "StallError", "StallWarning", "Subscription", "WatchOptionError",
           "WatchOptions", "WatchResult", "__version__", "create_bus", "decode", "encode", "load_factory",
           "watch"]


def __getattr__(name: str) -> Any:
    # not kept in this module's globals: the name always follows the module that defines it
    # (one that was imported again, as pytester's in-process runs do, has new classes)
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("busmon")
        except PackageNotFoundError:  # a checkout nobody installed
            return "0+unknown"
    raise AttributeError(f"module 'busmon' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # what a type checker and an IDE see: the same names, imported eagerly
    from busmon.bus.codec import DecodeError, decode, encode
    from busmon.bus.counters import BusCounters
    from busmon.bus.envelope import Envelope
    from busmon.bus.errors import (BusCloseError, BusClosedError, BusConfigError, BusConnectError, BusError,
                                   BusFault, BusRefusedError)
    from busmon.bus.factory import create_bus, load_factory
    from busmon.bus.protocol import EventBus, Handler, Subscription
    from busmon.probes.verdict.watch_result import WatchResult
    from busmon.probes.watching.watch import LeakError, LeakWarning, StallError, StallWarning, watch
    from busmon.probes.watching.watch_options import WatchOptionError, WatchOptions
