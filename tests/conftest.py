"""Shared fixtures: real brokers (once per session) and a bus per backend."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from typing import AsyncIterator, Iterator

import pytest

from busmon.bus import EventBus, create_bus
from busmon.probes.watching.watch import LeakWarning, StallWarning
from tests import leaky_buses
from tests.brokers import Broker, nats_server, tansu

BACKENDS = ["memory", "kafka", "nats", "nats+js"]
#: busmon's warning classes, held by this process for the whole session: pytester's in-process
#: runs drop the modules they imported afterwards, while pytest caches the class a -W filter names
#: (parse_warning_filter is lru_cached); were a later run to import them afresh,
#: "-W error::busmon.StallWarning" would name a class nobody raises any more
HELD_WARNINGS = (LeakWarning, StallWarning)


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Broker]:
    with tansu() as broker:
        yield broker


@pytest.fixture(scope="session")
def nats_broker() -> Iterator[Broker]:
    with nats_server() as broker:
        yield broker


def backend_url(request: pytest.FixtureRequest, backend: str) -> str:
    if backend == "memory":
        return "memory://"
    if backend == "kafka":
        return request.getfixturevalue("kafka_broker").url
    nats_url = request.getfixturevalue("nats_broker").url
    return nats_url.replace("nats://", "nats+js://") if backend == "nats+js" else nats_url


def backend_options(backend: str) -> dict:
    # JetStream in memory keeps the suite fast; the file store is the default for users
    return {"storage": "memory"} if backend == "nats+js" else {}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def url(request: pytest.FixtureRequest, backend: str) -> str:
    return backend_url(request, backend)


@pytest.fixture
def topic() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def bus(url: str, backend: str) -> AsyncIterator[EventBus]:
    b = create_bus(url, **backend_options(backend))
    await b.start()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture(autouse=True)
def release_stuck_threads() -> Iterator[None]:
    """Threads and executor jobs a misbehaving test bus left blocked are released after each
    test, so one test's leak does not outlive it (a stuck executor worker would hang exit)."""
    yield
    for thread, release in leaky_buses.STUCK_THREADS:
        release.set()
        thread.join(5)
    leaky_buses.STUCK_THREADS.clear()
    for release in leaky_buses.STUCK_JOBS:
        release.set()
    leaky_buses.STUCK_JOBS.clear()
    for proc in leaky_buses.STUCK_PROCESSES:
        try:
            os.kill(proc.pid, signal.SIGKILL)  # asyncio's waitpid thread reaps it
        except ProcessLookupError:
            pass
    if leaky_buses.STUCK_PROCESSES:  # wait for their reapers here, not inside the next test's window
        deadline = time.monotonic() + 5.0
        for thread in [t for t in threading.enumerate() if t.name.startswith("asyncio-waitpid-")]:
            thread.join(max(0.0, deadline - time.monotonic()))
    leaky_buses.STUCK_PROCESSES.clear()


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something is listening on for the test's length."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]
