"""Current stacks of leftovers: the coroutine chain of a task, the frames of a thread."""

from __future__ import annotations

import asyncio
import sys
import threading
import traceback


def _where(code, lineno: int | None) -> str:
    short = "/".join(code.co_filename.replace("\\", "/").split("/")[-2:])
    return f"{short}:{lineno} in {code.co_name}" if lineno else f"{short} in {code.co_name}"


def task_stack(task: asyncio.Task, limit: int = 12) -> list[str]:
    """The chain of awaits the task is suspended in, outermost first."""
    out: list[str] = []
    coro = task.get_coro()
    while coro is not None and len(out) < limit:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        if code is None:
            out.append(f"awaiting {type(coro).__name__}")
            break
        out.append(_where(code, frame.f_lineno if frame is not None else None))
        nxt = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if nxt is not None and not (hasattr(nxt, "cr_code") or hasattr(nxt, "gi_code")):
            out.append(f"awaiting {type(nxt).__name__}")
            break
        coro = nxt
    if not out:
        out = [_where(f.f_code, f.f_lineno) for f in task.get_stack(limit=limit)]
    return out


def thread_stack(thread: threading.Thread, limit: int = 12) -> list[str]:
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return []
    entries = traceback.extract_stack(frame, limit=limit)
    return [f"{'/'.join(e.filename.split('/')[-2:])}:{e.lineno} in {e.name}" for e in entries]
