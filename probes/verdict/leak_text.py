"""The verdict as text a person reads in a failing test: goleak's message, for asyncio.

Each leftover gets a headline (kind, what it is, its component and name, and how long it was
waited for), where it is now and its stack, and where it was created when that was traced.
What went while busmon waited (exited, closed, fired) is listed as lingering, never as a failure.
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping, Protocol

from busmon.bus.deadline import innermost
from busmon.probes.model import Leftover


class Judged(Protocol):
    """What the whole report reads of a verdict (a :class:`~busmon.probes.verdict.watch_result.WatchResult`)."""

    leftovers: tuple[Leftover, ...]
    label: str
    at_end: Mapping[str, int]
    settle_ms: float
    settle_timeout_s: float
    notes: tuple[str, ...]

    @property
    def leaked(self) -> list[Leftover]: ...

    @property
    def lingered(self) -> list[Leftover]: ...

_PLURAL = {"process": "processes"}
_STILL = {"task": "still running", "thread": "still running", "process": "still running",
          "timer": "still scheduled", "socket": "still open", "fd": "still open"}
_DEFAULT_TASK_NAME = re.compile(r"^Task-\d+$")
#: the stack lines shown per leftover (the innermost ones: that is where it is stuck)
STACK_LINES = 12


#: the order leftovers are told in: what the code ran, then what it held open
KIND_ORDER = {kind: i for i, kind in enumerate(("task", "thread", "timer", "socket", "fd", "process"))}


def by_kind(leftovers: Iterable[Leftover]) -> list[Leftover]:
    return sorted(leftovers, key=lambda x: KIND_ORDER.get(x.kind, len(KIND_ORDER)))


def leftover_counts(leftovers: Iterable[Leftover]) -> str:
    """``3 tasks and 1 socket``."""
    counts: dict[str, int] = {}
    for x in by_kind(leftovers):
        counts[x.kind] = counts.get(x.kind, 0) + 1
    parts = [f"{n} {kind if n == 1 else _PLURAL.get(kind, kind + 's')}" for kind, n in counts.items()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def display_name(x: Leftover) -> str:
    """How a leftover is named on one line: a task with asyncio's default name (``Task-9``) by
    its coroutine first (``Client._read_loop (Task-9)``); anything else by its name."""
    if x.kind == "task" and _DEFAULT_TASK_NAME.match(x.name):
        return f"{_qualname(x)} ({x.name})"
    return x.name


def _task_name(x: Leftover) -> str:
    """A task by the name it was given, else (``Task-12``) by its coroutine."""
    return _qualname(x) if _DEFAULT_TASK_NAME.match(x.name) else x.name


def _qualname(x: Leftover) -> str:
    return x.detail.split(" (", 1)[0] if x.detail else x.name


def headline(x: Leftover) -> str:
    """``task Client._read_loop (nats · Task-3)``: what it is first, whose it is after."""
    component = x.component.removeprefix("thread:")
    if component.startswith("created at "):  # said on a line of its own
        component = ""
    if x.kind == "task":
        what, who = _qualname(x), [component, x.name]
    else:
        what, who = x.name, [component]
    who = [w for i, w in enumerate(who) if w and w != what and w not in who[:i] and w != "unknown"]
    return f"{x.kind} {what}" + (f" ({' · '.join(who)})" if who else "")


def _ms(value: float | None) -> str:
    return f"{value:,.1f} ms" if value is not None and value < 100 else f"{value or 0:,.0f} ms"


def _facts(x: Leftover) -> list[str]:
    """The detail worth a line of its own: descriptors', timers' and processes' facts, a task's
    or thread's reason (ignored, destroyed), a thread's ids."""
    if x.kind in ("socket", "fd", "timer", "process"):
        return [x.detail] if x.detail else []
    if x.kind == "task" and " (" in x.detail:
        return [x.detail.split(" (", 1)[1].rstrip(")")]
    if x.kind == "thread" and x.detail:
        return [x.detail]
    return []


def _leaked_lines(x: Leftover, waited_ms: float) -> list[str]:
    still = _STILL.get(x.kind, "still there")
    if x.kind == "process" and "a zombie" in x.detail:
        still = "exited, never waited for,"
    state = "destroyed" if x.state == "destroyed" else f"leaked: {still} after {_ms(waited_ms)}"
    lines = [f"  {headline(x)}  {state}"]
    lines += [f"    {fact}" for fact in _facts(x)]
    if x.kind == "fd" and x.name.startswith("epoll"):
        lines.append("    an event loop's selector: was an event loop created and never closed?")
    if x.stack:
        if where := innermost([f for f in x.stack if not f.startswith("awaiting ")] or list(x.stack)):
            lines.append(f"    now at {where}")
        lines.append("    stack (innermost last):")
        lines += [f"      {frame}" for frame in x.stack[-STACK_LINES:]]
    if x.created_at:
        lines.append(f"    {_born(x)} {x.created_at}")
    return lines


def _born(x: Leftover) -> str:
    """``started at`` for a thread (the line that called ``Thread.start()``), else ``created at``."""
    return "started at" if x.kind == "thread" else "created at"


def _started(x: Leftover) -> str:
    """``; started at …`` for a thread whose start was traced (on its one line), else nothing."""
    return f"; started at {x.created_at}" if x.kind == "thread" and x.created_at else ""


def gone_verb(x: Leftover) -> str:
    """What happened to a leftover that went while busmon waited, in the words of its kind: a
    task, thread or process *exited*, a socket or descriptor was *closed* (by the peer, when that
    is what closed it), a timer *fired* or was *cancelled*."""
    if x.kind in ("socket", "fd"):
        return "closed by the peer" if x.detail and "closed by the peer" in x.detail else "closed"
    if x.kind == "timer":
        return "was cancelled" if x.detail.endswith("cancelled") else "fired"
    return "exited"


def _plural(n: int, word: str) -> str:
    return f"{n} {word if n == 1 else _PLURAL.get(word, word + 's')}"


def short_line(leftovers: list[Leftover], limit: int = 3) -> str:
    """``leaked 3 tasks and 1 socket: Client._read_loop, Client._flusher, …`` for one line."""
    names = list(dict.fromkeys(_task_name(x) if x.kind == "task" else x.name for x in by_kind(leftovers)))
    more = ", …" if len(names) > limit else ""
    return f"leaked {leftover_counts(leftovers)}: {', '.join(names[:limit])}{more}"


#: the states of a leftover busmon waited for (it was pending when the code ended)
WAITED_FOR = ("leaked", "destroyed", "unknown", "exited")


def _waited_line(result: Judged, context: str) -> str:
    """How long busmon waited, and only when it waited for something: ``waited up to 2 s`` for a
    leak (it waited the deadline out), ``waited 10.7 ms (up to 2 s)`` when all went in time,
    ``nothing to wait for`` when nothing the code started was still there at its end."""
    where = f", {context}," if context else ""
    # an ignored executor thread with an end: busmon waited for the job it was running
    if not any(x.state in WAITED_FOR or x.exited_after_ms is not None for x in result.leftovers):
        return f"nothing to wait for {context}" if context else "nothing to wait for"
    if result.leaked:
        return f"waited up to {result.settle_timeout_s:g} s{where} for what it started to exit"
    return f"waited {_ms(result.settle_ms)} (up to {result.settle_timeout_s:g} s){where} for what it started to exit"


def leak_report(result: Judged, context: str = "") -> str:
    """The whole report: a summary line, every failing leftover in full, then one line per
    lingering, ignored or unknown one, and the notes."""
    failing = by_kind(result.leaked)
    who = result.label or "the watched code"
    head = f"busmon: {who} leaked {leftover_counts(failing)}" if failing else f"busmon: {who} is clean"
    plain = result.at_end
    counted = " and ".join(_plural(plain[k], f"new {k.removesuffix('s')}") for k in ("tasks", "threads")
                           if k in plain)  # tasks not judged (no asyncio loop): not counted
    lines = [head, _waited_line(result, context) + f"; a plain count right at the end saw {counted}"]
    for x in failing:
        lines.append("")
        lines += _leaked_lines(x, result.settle_ms)
    lingered = by_kind(result.lingered)
    if lingered:
        lines += ["", "lingered (gone while busmon waited; not a failure):"]
        lines += [f"  {headline(x)}: {gone_verb(x)} after {_ms(x.exited_after_ms)}{_started(x)}" for x in lingered]
    for title, state in (("ignored:", "ignored"), ("could not be judged:", "unknown")):
        some = [x for x in result.leftovers if x.state == state]
        if some:
            lines += ["", title]
            lines += [f"  {headline(x)}" + (f": {f[0]}" if (f := _facts(x)) else "") + _started(x) for x in some]
    if result.notes:
        lines += [""] + [f"note: {n}" for n in result.notes]
    return "\n".join(lines)
