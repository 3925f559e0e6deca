"""The event loop runtimes' own worker threads: machinery while idle, the code's while busy.

asyncio's default executor, anyio's worker threads and trio's process-wide thread cache keep
threads alive between jobs, so a test that used one leaves a thread behind that is nobody's
leak. Such a thread is told apart by what it runs (its class or its target), never by its name
alone, and judged by its frames right now: waiting for a job, it is runtime machinery; running
a job someone submitted, it is that job's, and is waited for like any thread.

trio in guest mode (as anyio runs trio tests) waits for I/O in a thread-cache worker: that job
is trio's own, not the code's, and counts as machinery too.
"""

from __future__ import annotations

import sys
import threading
from types import FrameType

from busmon.probes.observe.components import RUNTIME_EXECUTOR_THREAD

ASYNCIO_EXECUTOR = "asyncio's default executor"
ANYIO_WORKERS = "anyio's worker threads"
TRIO_CACHE = "trio's thread cache"

#: how long an idle thread of each runtime pool lives
POOL_LIFETIME = {
    ASYNCIO_EXECUTOR: "it lives until the loop shuts down",
    ANYIO_WORKERS: "it exits after 10 s idle, or when its event loop closes",
    TRIO_CACHE: "it exits after 10 s idle (the cache is the process's, shared by every trio run)",
}
#: why trio's guest-mode I/O wait is machinery
TRIO_GUEST_IO = (f"runtime: {TRIO_CACHE}, waiting for I/O for a trio run in guest mode (as anyio runs "
                 "trio tests); it is back in the cache once the run takes its next step")

_TRIO_CACHE_FILE = "trio/_core/_thread_cache.py"


def runtime_pool(thread: threading.Thread) -> str | None:
    """The event loop runtime's own thread pool the thread belongs to, if any."""
    if RUNTIME_EXECUTOR_THREAD.match(thread.name):
        return ASYNCIO_EXECUTOR
    cls = type(thread)
    if cls.__name__ == "WorkerThread" and cls.__module__.startswith("anyio."):
        return ANYIO_WORKERS
    if is_trio_cache_worker(thread):
        return TRIO_CACHE
    return None


def is_trio_cache_worker(thread: threading.Thread) -> bool:
    """A worker of trio's thread cache: a plain Thread whose target is ``WorkerThread._work``."""
    target = getattr(thread, "_target", None)
    return (getattr(target, "__module__", None) == "trio._core._thread_cache"
            and getattr(target, "__qualname__", None) == "WorkerThread._work")


def machinery_reason(thread: threading.Thread, pool: str) -> str | None:
    """Why the pool's thread is runtime machinery right now (idle, or trio's own I/O wait);
    None while it runs a job someone submitted (or is between jobs: looked at again)."""
    if pool == ASYNCIO_EXECUTOR:
        busy = executor_busy(thread)
    elif pool == ANYIO_WORKERS:
        busy = anyio_worker_busy(thread)
    else:
        state = trio_worker_state(thread)
        if state == "io":
            return TRIO_GUEST_IO
        busy = state != "idle"
    return None if busy else f"runtime: {pool}, idle; {POOL_LIFETIME[pool]}"


def _path(frame: FrameType) -> str:
    return frame.f_code.co_filename.replace("\\", "/")


def _frame(thread: threading.Thread) -> FrameType | None:
    return sys._current_frames().get(thread.ident or -1)


def executor_busy(thread: threading.Thread) -> bool:
    """Whether a ThreadPoolExecutor worker is running a job (idle ones wait in the queue's get)."""
    frame = _frame(thread)
    while frame is not None:
        if frame.f_code.co_name == "run" and _path(frame).endswith("concurrent/futures/thread.py"):
            return True
        frame = frame.f_back
    return False


def anyio_worker_busy(thread: threading.Thread) -> bool:
    """anyio's workers are idle while their innermost frame (below threading's waits) is the
    job queue's ``get``."""
    frame = _frame(thread)
    while frame is not None and _path(frame).endswith("/threading.py"):
        frame = frame.f_back
    return not (frame is not None and frame.f_code.co_name == "get" and _path(frame).endswith("/queue.py"))


def trio_worker_state(thread: threading.Thread) -> str:
    """``idle`` (blocked in ``_work`` on its lock, waiting for a job), ``io`` (running guest
    mode's ``get_events``: trio waiting for I/O) or ``job`` (anything else: a job someone
    submitted, or the moments around one).

    A worker in its cache's idle list is idle whatever its frames say: it puts itself there
    before delivering its last result, so for a moment it is still in ``_handle_job`` while the
    next job may already be handed to it. Otherwise, by its frames, from the outermost:
    threading's, ``_work``, ``_handle_job``, outcome's ``capture``, then the job's function."""
    worker = getattr(getattr(thread, "_target", None), "__self__", None)
    idle_workers = getattr(getattr(worker, "_thread_cache", None), "_idle_workers", None)
    if isinstance(idle_workers, dict) and worker in idle_workers:
        return "idle"
    frames: list[FrameType] = []
    frame = _frame(thread)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()
    work = next((i for i, f in enumerate(frames)
                 if f.f_code.co_name == "_work" and _path(f).endswith(_TRIO_CACHE_FILE)), None)
    if work is None:
        return "job"   # not started yet, or ending: looked at again
    rest = frames[work + 1:]
    if not rest:
        # blocked on its lock (C: _work is the innermost Python frame): idle, unless the cache
        # has taken it off its idle list (a job handed over, not started yet; or it is exiting)
        return "job" if isinstance(idle_workers, dict) else "idle"
    job = next((f for f in rest if not _path(f).endswith(_TRIO_CACHE_FILE) and "/outcome/" not in _path(f)), None)
    if job is not None and job.f_code.co_name == "get_events" and _path(job).endswith("trio/_core/_run.py"):
        return "io"
    return "job"
