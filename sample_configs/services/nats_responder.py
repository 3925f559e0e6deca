"""A nats-py request/reply service, small and real: the shape busmon run judges at shutdown.

It answers requests on ``svc.echo`` (upper-casing them), sends itself ``--requests`` of them
as its load, and shuts down when they are answered (or on SIGTERM / Ctrl-C): the
subscription drained and the connection closed. ``--leak`` starts a health reporter thread
at start-up and never stops it: a thread outliving main(), with where it was started.

    busmon run -- python sample_configs/services/nats_responder.py --server nats://127.0.0.1:4222
    busmon run -- python sample_configs/services/nats_responder.py --server nats://127.0.0.1:4222 --leak
    busmon run --listen -- python sample_configs/services/nats_responder.py --forever   # then: busmon attach PID

(``busmon brokers`` starts nats-server on 127.0.0.1 and prints its address.)
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading

import nats

import busmon.agent


def report_health(stop: threading.Event) -> None:
    """A health reporter's thread: runs until told to stop."""
    while not stop.wait(1.0):
        pass


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    health_stop = threading.Event()
    health = threading.Thread(target=report_health, args=(health_stop,), name="health-reporter", daemon=True)
    health.start()

    nc = await nats.connect(args.server, connect_timeout=5, max_reconnect_attempts=0)

    async def echo(msg) -> None:
        await msg.respond(msg.data.upper())

    sub = await nc.subscribe("svc.echo", cb=echo)
    busmon.agent.mark("ready")
    answered = 0
    async with busmon.agent.phase("load"):
        for i in range(args.requests):
            if stop.is_set():
                break
            reply = await nc.request("svc.echo", f"ping {i}".encode(), timeout=5)
            answered += reply.data == f"PING {i}".encode()
    print(f"answered {answered} of {args.requests} requests", flush=True)
    if args.forever:  # a service's steady life: a request every 50 ms until SIGTERM or Ctrl-C
        async with busmon.agent.phase("serving"):
            while not stop.is_set():
                await nc.request("svc.echo", b"tick", timeout=5)
                try:
                    await asyncio.wait_for(stop.wait(), 0.05)
                except asyncio.TimeoutError:
                    pass
    await sub.drain()
    await nc.close()
    if not args.leak:
        health_stop.set()
        await asyncio.to_thread(health.join)
    busmon.agent.mark("stopped")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="nats://127.0.0.1:4222", help="the NATS server URL")
    p.add_argument("--requests", type=int, default=200, help="requests to send and answer")
    p.add_argument("--leak", action="store_true", help="leave the health reporter thread running")
    p.add_argument("--forever", action="store_true", help="after the load, serve a trickle of requests until stopped")
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
