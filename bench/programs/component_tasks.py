"""10,000 idle tasks made by 100 modules of the program's own (100 components to busmon), for
bench/metrics_overhead.py: writes the modules into ``--modules``, starts the tasks, prints
``ready``, and ends them all when stdin closes. It knows nothing of busmon."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from pathlib import Path


async def main(args: argparse.Namespace) -> None:
    folder = Path(args.modules)
    folder.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(folder))
    stop = asyncio.Event()
    tasks = []
    for m in range(args.components):
        (folder / f"component_{m:03}.py").write_text("async def idle(stop):\n    await stop.wait()\n")
        idle = importlib.import_module(f"component_{m:03}").idle
        tasks += [asyncio.create_task(idle(stop)) for _ in range(args.tasks // args.components)]
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    print("ready", flush=True)
    await stdin.read()
    stop.set()
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--modules", required=True)
    p.add_argument("--tasks", type=int, default=10_000)
    p.add_argument("--components", type=int, default=100)
    asyncio.run(main(p.parse_args()))
