"""Deadlines on calls into client libraries and user code, with the stack of whatever got stuck.

``asyncio.timeout`` alone is not enough here: when it fires, the coroutine that was
stuck has already been unwound, so nobody can say *where* it was stuck, and a
coroutine that swallows ``CancelledError`` keeps the caller waiting forever. So a
bounded call runs in its own task; at the deadline its await chain is read, it is
cancelled, and it gets a short grace period to exit. If it still has not, it is
abandoned (and reported), never waited on forever.

A ``CancelledError`` raised *by the library* (aiokafka #647: ``consumer.stop()``)
is turned into :class:`LibraryCancelled`, a failure; only the caller's own
cancellation propagates as cancellation.
"""

from __future__ import annotations

import asyncio
import sysconfig
from typing import Any, Awaitable, Iterable, TypeVar

from busmon.bus.errors import BusError

T = TypeVar("T")

#: how long a cancelled call may take to exit before it is abandoned
CANCEL_GRACE_S = 1.0


class CallTimeout(BusError):
    """A bounded call did not finish within its deadline."""

    def __init__(self, what: str, timeout: float, stack: list[str],
                 abandoned: asyncio.Task | None = None) -> None:
        self.what = what
        self.timeout = timeout
        self.stack = stack
        #: the task still running the call: it ignored cancellation for CANCEL_GRACE_S
        self.abandoned = abandoned
        where = f" (stuck at {innermost(stack)})" if stack else ""
        refused = "; it ignored cancellation and was abandoned" if abandoned is not None else ""
        super().__init__(f"{what} did not return within {timeout:g} s{where}{refused}")


class LibraryCancelled(BusError):
    """A call raised ``CancelledError`` although nobody cancelled the caller."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"{what} raised CancelledError without being cancelled")


def coroutine_stack(coro: Any, limit: int = 16) -> list[str]:
    """The chain of awaits a suspended coroutine is in, outermost first (``file:line in fn``)."""
    out: list[str] = []
    while coro is not None and len(out) < limit:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        if code is None:
            out.append(f"awaiting {type(coro).__name__}")
            break
        out.append(short_where(code.co_filename, frame.f_lineno if frame is not None else None,
                               code.co_name))
        nxt = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        if nxt is not None and not (hasattr(nxt, "cr_code") or hasattr(nxt, "gi_code")):
            out.append(f"awaiting {type(nxt).__name__}")
            break
        coro = nxt
    return out


def task_stack(task: asyncio.Task, limit: int = 16) -> list[str]:
    """A task's await chain, or its frames when the coroutine cannot be walked."""
    out = coroutine_stack(task.get_coro(), limit)
    if not out:
        out = [short_where(f.f_code.co_filename, f.f_lineno, f.f_code.co_name)
               for f in task.get_stack(limit=limit)]
    return out


_STDLIB = sysconfig.get_paths()["stdlib"].replace("\\", "/").rstrip("/") + "/"


def short_file(filename: str) -> str:
    """``package/module.py``: the path from the top package (or from the standard library,
    ``threading.py``), not the whole disk path; what :func:`short_where` starts with."""
    path = filename.replace("\\", "/")
    parts = path.split("/")
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            parts = parts[parts.index(marker) + 1:]
            break
    else:
        parts = [path.removeprefix(_STDLIB)] if path.startswith(_STDLIB) else parts[-2:]
    return "/".join(parts)


def short_where(filename: str, lineno: int | None, function: str) -> str:
    """``package/module.py:12 in fn``: the path from the top package (or from the standard
    library, ``threading.py``), not the whole disk path."""
    short = short_file(filename)
    return f"{short}:{lineno} in {function}" if lineno else f"{short} in {function}"


#: frames of the runtime's own machinery: where a task or thread waits, not who made it wait
_MACHINERY = ("awaiting ", "asyncio/", "threading.py", "concurrent/futures/")
#: this module as its frames read (``bus/deadline.py`` in a checkout): never where a call is stuck
_OWN_FILE = short_file(__file__)


def add_machinery(prefix: str) -> None:
    """Frames whose location starts with ``prefix`` are never named as where a call is stuck: an
    observer that wraps the loop's methods (busmon's socket and process attribution) registers its
    own module, so ``stuck at`` names the bus's frame under it, not the wrapper."""
    global _MACHINERY
    if prefix not in _MACHINERY:
        _MACHINERY = (*_MACHINERY, prefix)


def innermost(stack: list[str] | tuple[str, ...]) -> str:
    """The deepest frame that is not the runtime's own machinery (asyncio, threading, executors)."""
    for line in reversed(stack):
        if not line.startswith(_MACHINERY):
            return line
    return stack[-1] if stack else ""


async def bounded(call: Awaitable[T], timeout: float, what: str, *, name: str = "bus.call",
                  grace: float = CANCEL_GRACE_S) -> T:
    """Await ``call`` for at most ``timeout`` seconds (plus a bounded cancel grace).

    Raises :class:`CallTimeout` (with the stuck stack) at the deadline and
    :class:`LibraryCancelled` when the call raised ``CancelledError`` on its own.
    The caller's own cancellation is passed on to the call and re-raised.
    """
    task = asyncio.create_task(_run(call), name=f"{name}:{what}")
    try:
        done, _ = await asyncio.wait([task], timeout=max(0.0, timeout))
    except asyncio.CancelledError:
        await _cancel(task, grace)
        raise
    if not done:
        stack = [line for line in task_stack(task) if not line.startswith(_OWN_FILE)]
        abandoned = None if await _cancel(task, grace) else task
        raise CallTimeout(what, timeout, stack, abandoned)
    if task.cancelled():
        raise LibraryCancelled(what)
    return task.result()


async def _run(call: Awaitable[T]) -> T:
    return await call


async def _cancel(task: asyncio.Future, grace: float = CANCEL_GRACE_S) -> bool:
    """Cancel ``task`` and wait up to ``grace`` for it to exit; True if it did.

    Its outcome is retrieved either way, so no 'exception was never retrieved'
    reaches the log.
    """
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=grace)
    if not done:
        task.add_done_callback(_consume)
        return False
    _consume(task)
    return True


def _consume(task: asyncio.Future) -> None:
    if not task.cancelled():
        task.exception()


async def cancel_and_wait(tasks: Iterable[asyncio.Task | None], grace: float = CANCEL_GRACE_S
                          ) -> list[asyncio.Task]:
    """Cancel ``tasks`` and await their exit for at most ``grace`` seconds.

    Returns the tasks that refused to exit (they ignored cancellation). The
    caller's own task is skipped (it cannot await itself).
    """
    current = asyncio.current_task()
    tasks = [t for t in tasks if t is not None and t is not current]
    for t in tasks:
        if t.done():
            _consume(t)  # it already ended (perhaps of an error): ours to retrieve, not asyncio's to log
    pending = [t for t in tasks if not t.done()]
    for t in pending:
        t.cancel()
    if not pending:
        return []
    done, refused = await asyncio.wait(pending, timeout=grace)
    for t in done:
        _consume(t)
    for t in refused:
        t.add_done_callback(_consume)
    return list(refused)

