"""Attribution: which component a task or thread belongs to (the post-mortem's second table)."""

from __future__ import annotations

import asyncio
import re
import threading

from busmon.bus import deadline

_DEFAULT_TASK_NAME = re.compile(r"^Task-\d+$")
RUNTIME_EXECUTOR_THREAD = re.compile(r"^asyncio_\d+$")


#: busmon's own machinery by package (see :func:`package_of`): its tasks, timers, frames and
#: objects are never the code under test's. ``busmon.bus`` is not among them: it is a bus under test.
BUSMON_PACKAGES = frozenset({"busmon", "busmon.probes", "busmon.tui"})


def package_of(module: str) -> str:
    """The package a module counts as, for attribution: its top-level package (``aiokafka``),
    or for busmon's own modules the part of busmon (``busmon.bus``, ``busmon.probes``): one
    install holds both the bus under test and the instruments that measure it."""
    top, _, rest = module.partition(".")
    if top == "busmon" and rest:
        return f"busmon.{rest.partition('.')[0]}"
    return top


def name_component(name: str) -> str:
    """The component a task or thread name stands for.

    ``bus.pool.worker-17`` → ``bus.pool`` (an indexed member of a three-part name is its
    group); ``busmon.publisher-3`` → ``busmon.publisher``; ``bus.kafka.consumer:orders`` →
    ``bus.kafka.consumer`` (what follows ':' is the instance).
    """
    base = name.split(":", 1)[0]
    parts = base.split(".")
    if re.search(r"[-_]\d+$", parts[-1]):
        if len(parts) >= 3:
            return ".".join(parts[:-1])
        parts[-1] = re.sub(r"[-_]\d+$", "", parts[-1]) or parts[-1]
    return ".".join(parts)


def coro_qualname(task: asyncio.Task) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or type(coro).__name__


#: modules whose coroutines only wrap another one (``bus.deadline.bounded`` wraps a call, the
#: agent of ``busmon run`` a program's main coroutine): the wrapped coroutine's code owns the task
WRAPPING_MODULES = frozenset({deadline.__name__, "busmon.probes.agent.agent"})


def coro_module(task: asyncio.Task) -> str:
    """The module of the task's outermost coroutine that is not asyncio's own
    (asyncio's, when every coroutine in the chain is asyncio's)."""
    coro = task.get_coro()
    first = ""
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        module = frame.f_globals.get("__name__", "") if frame is not None else ""
        if not module:
            code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
            module = _module_from_filename(code.co_filename) if code is not None else ""
        if module and module.split(".")[0] != "asyncio" and module not in WRAPPING_MODULES:
            return module  # a wrapper's (deadline.bounded's, the agent's) is its callee's
        first = first or module
        coro = getattr(coro, "cr_await", None)
        if coro is not None and not hasattr(coro, "cr_frame") and not hasattr(coro, "gi_frame"):
            break
    return first


def _module_from_filename(filename: str) -> str:
    parts = filename.replace("\\", "/").split("/")
    if "site-packages" in parts:
        i = parts.index("site-packages")
        return ".".join(p.removesuffix(".py") for p in parts[i + 1 :])
    return parts[-1].removesuffix(".py")


def task_component(task: asyncio.Task, created_at: str | None = None,
                   created_by: str | None = None) -> str:
    """The task's ``bus.`` / ``busmon.`` name if it has one, else its coroutine's top package;
    for a bare asyncio coroutine (``Event.wait``, ``sleep``), the package that created the task
    (the task factory notes it), else where it was created (with creation tracing on)."""
    name = task.get_name()
    if name.startswith(("bus.", "busmon.")):
        return name_component(name)
    if not _DEFAULT_TASK_NAME.match(name) and "." in name:
        return name_component(name)
    module = coro_module(task)
    top = package_of(module) if module else ""
    if top and top != "asyncio":
        return top
    if created_by:
        return package_of(created_by)
    if created_at:
        return f"created at {created_at}"
    return top or "unknown"


_DEFAULT_THREAD_NAME = re.compile(r"^Thread-\d+( \(.*\))?$")
#: the packages busmon's own front ends are made of: their threads are busmon's machinery
_UI_PACKAGES = ("rich", "textual")


def thread_component(thread: threading.Thread) -> str:
    name = thread.name
    if RUNTIME_EXECUTOR_THREAD.match(name):
        return "asyncio.executor"
    if name == "MainThread":
        return "main"
    target = getattr(thread, "_target", None)
    if getattr(target, "__module__", None) == "trio._core._thread_cache":  # a worker of trio's cache
        return "trio.thread_cache"
    if name.startswith("busmon-"):
        return "busmon." + name.removeprefix("busmon-")
    if _DEFAULT_THREAD_NAME.match(name):  # unnamed: say whose code it runs
        module = type(thread).__module__
        if module == "threading" and target is not None:
            module = getattr(target, "__module__", None) or module
        top = package_of(module or "threading")
        if top in _UI_PACKAGES:
            return f"busmon.ui ({top})"
        if top != "threading":
            return top
    return name_component(name) if re.search(r"[-_]\d+$", name) else name
