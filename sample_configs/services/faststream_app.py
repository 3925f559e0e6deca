"""A FastStream app on NATS, small and real: the shape busmon run judges at shutdown.

A subscriber counts ``orders``; after start-up the app publishes ``--messages`` of them to
itself and exits when all have arrived (or on SIGTERM / Ctrl-C, FastStream's own handling).
``--leak`` starts a cache refresher task after start-up and never cancels it on shutdown: a
task outliving the app, that asyncio.run() would quietly cancel afterwards.

    busmon run -- python sample_configs/services/faststream_app.py --server nats://127.0.0.1:4222
    busmon run -- python sample_configs/services/faststream_app.py --server nats://127.0.0.1:4222 --leak
"""

from __future__ import annotations

import argparse
import asyncio

from faststream import FastStream
from faststream.nats import NatsBroker

import busmon.agent


def build(args: argparse.Namespace) -> FastStream:
    # FastStream's line per message would drown what busmon says: its logging off
    broker = NatsBroker(args.server, connect_timeout=5, max_reconnect_attempts=0, logger=None)
    app = FastStream(broker, logger=None)
    received = 0
    all_in = asyncio.Event()
    refresher: list[asyncio.Task] = []

    @broker.subscriber("orders")
    async def on_order(body: str) -> None:
        nonlocal received
        received += 1
        if received >= args.messages:
            all_in.set()

    async def refresh_cache() -> None:
        while True:
            await asyncio.sleep(0.5)

    @app.after_startup
    async def load() -> None:
        busmon.agent.mark("ready")
        refresher.append(asyncio.create_task(refresh_cache(), name="cache-refresher"))
        for i in range(args.messages):
            await broker.publish(f"order {i}", "orders")
        asyncio.create_task(exit_when_done(), name="exit-when-done")

    async def exit_when_done() -> None:
        await all_in.wait()
        print(f"received {received} of {args.messages} orders", flush=True)
        app.exit()

    @app.on_shutdown
    async def stop_refresher() -> None:
        if not args.leak:
            for task in refresher:
                task.cancel()
            await asyncio.gather(*refresher, return_exceptions=True)

    @app.after_shutdown
    async def stopped() -> None:
        busmon.agent.mark("stopped")

    return app


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="nats://127.0.0.1:4222", help="the NATS server URL")
    p.add_argument("--messages", type=int, default=200, help="orders to publish and receive")
    p.add_argument("--leak", action="store_true", help="leave the cache refresher task running")
    return p.parse_args()


if __name__ == "__main__":
    asyncio.run(build(parse()).run())
