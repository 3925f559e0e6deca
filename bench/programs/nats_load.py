"""A nats-py request/reply service under load, for bench/run_overhead.py: it answers its own
``--requests`` requests, one at a time from ``--clients`` concurrent clients, and prints one
JSON line: requests per second and the latency percentiles. It starts its load when a line
arrives on stdin (after printing ``ready``). It knows nothing of busmon."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import nats


async def main(args: argparse.Namespace) -> None:
    nc = await nats.connect(args.server, connect_timeout=5, max_reconnect_attempts=0)

    async def echo(msg) -> None:
        await msg.respond(msg.data)

    sub = await nc.subscribe("bench.echo", cb=echo)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # go: when whoever measures is ready
    latencies: list[float] = []
    per_client = args.requests // args.clients

    async def client(c: int) -> None:
        for i in range(per_client):
            t0 = time.perf_counter()
            await nc.request("bench.echo", b"x" * 64, timeout=10)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(args.clients)))
    elapsed = time.perf_counter() - started
    await sub.unsubscribe()
    await nc.close()
    latencies.sort()
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 3)  # noqa: E731
    print(json.dumps({"requests": len(latencies), "req_per_s": round(len(latencies) / elapsed, 1),
                      "p50_ms": pick(0.5), "p99_ms": pick(0.99)}), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--server", required=True)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--clients", type=int, default=4)
    asyncio.run(main(p.parse_args()))
