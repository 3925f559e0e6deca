"""Real brokers for the tests: Tansu (Kafka-compatible) and nats-server on free loopback ports.

The starting and stopping live in the package (bus.brokers_local), shared with ``busmon
brokers``; this module keeps the names the tests import.
"""

from __future__ import annotations

from busmon.bus.brokers_local import (HOST, Broker, free_port, nats_server, nats_server_binary, serve, tansu,
                               tansu_binary, wait_for_port)

_serve = serve  # tests/secured_brokers.py's name for it

__all__ = ["HOST", "Broker", "_serve", "free_port", "nats_server", "nats_server_binary", "serve", "tansu",
           "tansu_binary", "wait_for_port"]
