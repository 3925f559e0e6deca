"""busmon's embedded event bus: one interface over memory, Kafka and NATS.

>>> bus = create_bus("memory://")
"""

from busmon.bus.codec import DecodeError, decode, encode
from busmon.bus.counters import BusCounters
from busmon.bus.envelope import Envelope
from busmon.bus.errors import (BusCloseError, BusClosedError, BusConfigError, BusConnectError, BusError, BusFault,
                        BusRefusedError)
from busmon.bus.factory import create_bus, load_factory
from busmon.bus.protocol import EventBus, Handler, Subscription

__all__ = [
    "BusCloseError", "BusClosedError", "BusConfigError", "BusConnectError", "BusCounters", "BusError",
    "BusFault", "BusRefusedError",
    "DecodeError", "Envelope", "EventBus", "Handler", "Subscription", "create_bus",
    "decode", "encode", "load_factory",
]
