"""Current stacks of leftovers: the coroutine chain of a task, the frames of a thread.

Frames are written ``package/module.py:line in function``, the path kept from the top
package (``nats/aio/client.py``, not ``aio/client.py``), so a person can find the file.
"""

from __future__ import annotations

import sys
import threading
import traceback

from busmon.bus.deadline import innermost, short_where, task_stack

__all__ = ["innermost", "stack_component", "task_stack", "thread_stack"]


def thread_stack(thread: threading.Thread, limit: int = 12) -> list[str]:
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return []
    return [short_where(e.filename, e.lineno, e.name) for e in traceback.extract_stack(frame, limit=limit)]


def stack_component(stack: list[str] | tuple[str, ...]) -> str:
    """The top package of the innermost frame that is not asyncio's: who was stuck."""
    frame = innermost(list(stack))
    if not frame or frame.startswith("awaiting "):
        return "unknown"
    path = frame.split(":", 1)[0]
    return path.split("/", 1)[0].removesuffix(".py")
