"""Small programs for ``busmon run`` tests, and how to run them under busmon as a person would
(``python -m busmon run -- python prog.py``, a real process with the agent inside)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

#: a bound on every run in these tests: a hang is a failure, said as such
TIMEOUT_S = 60


def write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def busmon_run(*args: str, cwd: Path | None = None, stdin: str | None = None,
               env: dict[str, str] | None = None, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """``busmon run ARGS`` to its end; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-m", "busmon", "run", *args], cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def start_run(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    """``busmon run ARGS`` started; the caller signals it, reads it and waits for it."""
    return subprocess.Popen([sys.executable, "-m", "busmon", "run", *args], cwd=cwd, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def phases(data: dict[str, Any], run: int = 0) -> list[str]:
    return [p["phase"] for p in data["runs"][run]["phases"]]


def leaked(data: dict[str, Any], run: int = 0) -> list[dict[str, Any]]:
    return [x for x in data["runs"][run]["leftovers"] if x["state"] in ("leaked", "destroyed")]


#: a service in miniature: a consumer task started at start-up, stopped at shutdown unless --leak;
#: marks its readiness and the consumer's end; reads one line of stdin and echoes it
SERVICE = """
    import asyncio, sys
    import busmon.agent

    async def consume(queue, done):
        while True:
            item = await queue.get()
            print("consumed", item, flush=True)
            done.set()

    async def main():
        queue, done = asyncio.Queue(), asyncio.Event()
        consumer = asyncio.create_task(consume(queue, done), name="consumer")
        busmon.agent.mark("ready")
        await queue.put(sys.stdin.readline().strip())
        await done.wait()
        if "--leak" not in sys.argv:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
        busmon.agent.mark("consumer stopped")

    asyncio.run(main())
    sys.exit(int(sys.argv[sys.argv.index("--exit") + 1]) if "--exit" in sys.argv else 0)
"""


def busmon_cli(*args: str, cwd: Path | None = None, prelude: str = "") -> subprocess.CompletedProcess:
    """busmon's command line in a fresh Python, after ``prelude`` (``sys.modules['x'] = None``:
    as if the package x were not installed)."""
    code = f"{prelude}import sys; from busmon.tui.cli import main; sys.argv = ['busmon', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT_S)


def assert_one_line(done: subprocess.CompletedProcess, *said: str) -> None:
    """Refused as bad input: exit 2, one line on stderr holding each of ``said``, no traceback."""
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for part in said:
        assert part in lines[0], lines[0]
