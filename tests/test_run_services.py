"""``busmon run`` on the sample services (sample_configs/services/), as real processes against
real brokers started by the tests (Tansu for aiokafka, nats-server for nats-py and FastStream):
clean → exit 0; ``--leak`` → exit 1, naming what was left and where it was created."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.brokers import Broker
from tests.run_programs import TIMEOUT_S, busmon_run, leaked, phases, report, start_run

SERVICES = Path(__file__).resolve().parent.parent / "sample_configs" / "services"
PY = sys.executable


def _line_of(path: Path, text: str) -> int:
    """The line number of the first line holding ``text`` (where a leftover was made)."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def _host_port(url: str) -> str:
    return url.split("://", 1)[1]


def test_aiokafka_consumer_service_clean_and_leaking(kafka_broker: Broker, tmp_path: Path) -> None:
    service = str(SERVICES / "kafka_consumer.py")
    args = ["--", PY, service, "--bootstrap", _host_port(kafka_broker.url), "--messages", "50"]
    # both at once (each waits ~5 s for its consumer group's join), each on a topic of its own
    clean = start_run("--report", str(tmp_path / "clean.json"), *args)
    leaky = start_run("--settle-timeout", "1", "--report", str(tmp_path / "leak.json"), *args, "--leak")
    try:
        clean_out, clean_err = clean.communicate(timeout=TIMEOUT_S)
        _, err = leaky.communicate(timeout=TIMEOUT_S)
    finally:
        clean.kill()
        leaky.kill()
    assert clean.returncode == 0, clean_err
    assert clean_out == "consumed 50 of 50 orders\n"
    assert phases(report(tmp_path / "clean.json")) == ["baseline", "ready", "load", "stopped", "shutdown", "settle"]

    assert leaky.returncode == 1, err
    left = leaked(report(tmp_path / "leak.json"))
    kinds = {x["kind"] for x in left}
    assert {"task", "socket"} <= kinds, left
    routines = {x["detail"].split(" (")[0] for x in left if x["kind"] == "task"}
    assert "GroupCoordinator._heartbeat_routine" in routines, routines
    assert "Fetcher._fetch_requests_routine" in routines, routines
    assert all(x["component"] == "aiokafka" for x in left)
    # the consumer the service forgot, by where aiokafka made its tasks and sockets
    assert "created at aiokafka/consumer/group_coordinator.py" in err
    assert "socket tcp → " + _host_port(kafka_broker.url) in err


@pytest.mark.parametrize("service, load, said, kind, name, made_at", [
    # a health reporter thread started at start-up and never stopped
    ("nats_responder.py", "--requests", "answered 50 of 50 requests", "thread", "health-reporter",
     ("health.start()", "main")),
    # a cache refresher task started after start-up and never cancelled on shutdown
    ("faststream_app.py", "--messages", "received 50 of 50 orders", "task", "cache-refresher",
     ("refresher.append(", "load")),
])
def test_nats_service_clean_and_leaking(nats_broker: Broker, tmp_path: Path, service: str, load: str, said: str,
                                        kind: str, name: str, made_at: tuple[str, str]) -> None:
    args = ["--", PY, str(SERVICES / service), "--server", nats_broker.url, load, "50"]
    out = busmon_run(*args)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{said}\n" and "is clean" in out.stderr

    out = busmon_run("--settle-timeout", "0.5", "--report", str(tmp_path / "leak.json"), *args, "--leak")
    assert out.returncode == 1, out.stderr
    [left] = leaked(report(tmp_path / "leak.json"))
    assert left["kind"] == kind and left["name"] == name
    text, function = made_at
    assert left["created_at"].endswith(f"{service}:{_line_of(SERVICES / service, text)} in {function}")


@pytest.mark.parametrize("service", ["nats_responder.py", "faststream_app.py"])
def test_the_services_run_without_busmon_too(service: str, nats_broker: Broker) -> None:
    """The marks are no-ops without busmon: the services are ordinary programs (and nothing
    tells them apart from a leak-free run: that is what busmon is for)."""
    out = subprocess.run([PY, str(SERVICES / service), "--server", nats_broker.url, "--leak"], capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert " of " in out.stdout
