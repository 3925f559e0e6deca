"""``busmon brokers``: Tansu (Kafka) and nats-server (JetStream on) on loopback, to try busmon
on real brokers by hand, until Ctrl-C, SIGTERM or the terminal closing (SIGHUP).

The brokers run in sessions of their own, so the terminal's signals reach only this process,
which stops both (and removes nats-server's store) before it exits; on Linux they also die
with it if it is killed outright.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable

from busmon.bus.brokers_local import Broker, BrokerFailed, BrokerMissing, start_nats_server, start_tansu

#: the signals that end ``busmon brokers``: Ctrl-C, kill, the terminal closing
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def usage_lines(kafka: Broker, nats: Broker) -> list[str]:
    """What to type next: the URLs and ready command lines."""
    kafka_url, js = kafka.url, nats.url.replace("nats://", "nats+js://")
    return [
        f"Tansu (Kafka API)            {kafka_url}",
        f"nats-server (JetStream on)   {nats.url}   JetStream: {js}",
        f"JetStream store (removed on exit): {nats.store.name if nats.store else '-'}",
        "",
        "Try them, from another terminal:",
        f"  busmon play sample_configs/ladder-kafka.toml --headless --url {kafka_url}",
        f"  busmon play sample_configs/ladder-nats.toml --headless --url {nats.url}",
        f"  busmon compare sample_configs/compare.toml --backends kafka,nats,nats-js --url kafka={kafka_url} "
        f"--url nats={nats.url} --url nats-js={js}",
        "",
        "Ctrl-C (or closing this terminal) stops both.",
    ]


def serve_brokers(say: Callable[[str], None], *, kafka_port: int = 0, nats_port: int = 0) -> int:
    """Start both brokers, ``say`` how to use them, and keep them until a stop signal or until
    one of them exits. Returns the exit code: 0 stopped by a signal, 3 a broker failed.
    Raises :class:`BrokerMissing` (before starting anything) when a binary is not installed."""
    stop = threading.Event()
    why: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        why.append(signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    brokers: list[Broker] = []
    try:
        from busmon.bus.brokers_local import nats_server_binary, tansu_binary

        tansu_binary(), nats_server_binary()  # both installed, or one line saying how, before starting either
        for name, begin, port in (("Tansu", start_tansu, kafka_port), ("nats-server", start_nats_server, nats_port)):
            if stop.is_set():
                return 0
            try:
                brokers.append(begin(port, own_session=True))
            except BrokerFailed as exc:
                say(f"busmon brokers: {name} {exc}")
                return 3
        kafka, nats = brokers
        for line in usage_lines(kafka, nats):
            say(line)
        for b in brokers:  # a broker that exits on its own ends the command too
            threading.Thread(target=_exited, args=(b, stop), name=f"busmon.brokers.{b.name}", daemon=True).start()
        stop.wait()
        gone = [b for b in brokers if b.proc.poll() is not None]
        if not why and gone:
            say(f"busmon brokers: {gone[0].name} exited with code {gone[0].proc.returncode}; stopping")
            return 3
        return 0
    finally:
        for b in reversed(brokers):
            b.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _exited(broker: Broker, stop: threading.Event) -> None:
    broker.proc.wait()
    stop.set()


__all__ = ["BrokerMissing", "serve_brokers", "usage_lines"]
