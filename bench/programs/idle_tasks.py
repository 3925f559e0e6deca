"""``--tasks`` idle tasks alive, for bench/run_overhead.py: prints this process's resident memory
with them all alive (after a GC), then cancels them and returns: what the agent keeps per task,
and how long its verdict takes once the last of them exited. It knows nothing of busmon."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json

import psutil


async def main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(stop.wait(), name=f"idle-{i}") for i in range(args.tasks)]
    await asyncio.sleep(0)
    gc.collect()
    print(json.dumps({"tasks": len(tasks), "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 2)}),
          flush=True)
    stop.set()
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", type=int, default=10_000)
    asyncio.run(main(p.parse_args()))
