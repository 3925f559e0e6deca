"""Ignore rules (goleak's IgnoreTopFunction, for asyncio and beyond): which leftovers are
labelled ``ignored`` instead of failing the run, and which rule said so.

One matcher for every kind, so a pattern means the same thing everywhere: fnmatch, case
sensitive, against each of the names a leftover goes by.
"""

from __future__ import annotations

import asyncio
import fnmatch
import threading
from dataclasses import dataclass
from typing import Any, Iterable

from busmon.probes.observe.components import coro_qualname


def rule_reason(patterns: Iterable[str], *names: str) -> str | None:
    """``ignore rule '<pattern>'`` for the first pattern that matches any of ``names``."""
    for pattern in patterns:
        if any(fnmatch.fnmatchcase(name, pattern) for name in names):
            return f"ignore rule {pattern!r}"
    return None


@dataclass(frozen=True)
class IgnoreRules:
    tasks: tuple[str, ...] = ()      # coroutine qualname (or task name) patterns
    threads: tuple[str, ...] = ()    # thread name patterns
    sockets: tuple[str, ...] = ()    # descriptors: address (host:port, host, or a bare port), owner
                                     # (the component: nats, aiokafka), target or label
    processes: tuple[str, ...] = ()  # child command lines; an ignored child takes its pipes and
                                     # asyncio's waitpid thread with it

    def task_reason(self, task: asyncio.Task) -> str | None:
        return rule_reason(self.tasks, coro_qualname(task), task.get_name())

    def thread_reason(self, thread: threading.Thread) -> str | None:
        return rule_reason(self.threads, thread.name)

    def socket_reason(self, d: Any) -> str | None:
        """``d``: a ``busmon.probes.observe.fds.Descriptor``."""
        ends = [x for x in (d.peer or "", d.local or "") if ":" in x]
        for pattern in self.sockets:
            if pattern.isdigit():  # a port, either end
                if any(x.rsplit(":", 1)[-1] == pattern for x in ends):
                    return f"ignore rule {pattern!r}"
            elif reason := rule_reason((pattern,), d.peer or "", d.local or "", *map(_host, ends),
                                       d.target, d.label(), d.component):
                return reason
        return None

    def process_reason(self, c: Any) -> str | None:
        """``c``: a ``busmon.probes.observe.children.Child``."""
        return rule_reason(self.processes, c.cmdline)


def _host(address: str) -> str:
    """``127.0.0.1`` of ``127.0.0.1:4222``; ``::1`` of ``[::1]:4222``."""
    return address.rsplit(":", 1)[0].strip("[]")


def type_reason(patterns: Iterable[str], name: str) -> str | None:
    """For a retained type: ``patterns`` match its full name or its bare one."""
    return rule_reason(patterns, name, name.rsplit(".", 1)[-1])
