"""Settling descriptors and child processes: what the run opened or started and left behind.

The same semantics as tasks and threads in ``settle.py``: candidates are every open
descriptor and every child process the run's baseline lacked, whenever it appeared;
each is watched until it goes away or the settle deadline, then judged ``exited`` (with
the milliseconds it took), ``leaked``, ``destroyed`` (a socket only the garbage collector
closed: nothing ever called ``close()``), or ``ignored``. Descriptors are known by number
*and* target, processes by pid *and* start time, so a reused number is a new one.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from busmon.probes.observe import children as proc_probe
from busmon.probes.observe import fds as fd_probe
from busmon.probes.verdict.ignore import IgnoreRules
from busmon.probes.model import Leftover

#: descriptor kinds judged as sockets (the rest are ``fd`` leftovers)
SOCKET_KINDS = ("tcp", "udp", "unix", "socket")
#: how long, after the verdict's GC closed one end of a pair, the other end's owner is given
#: to close it (a server thread sees the peer go within a millisecond or two)
PEER_GRACE_S = 0.25
#: this process's own /proc files: read for a moment by psutil (busmon's sampler among them),
#: never anything a bus or a test holds
_OWN_PROC = ("/proc/self/", "/proc/thread-self/")


@dataclass
class Attribution:
    """What names the owner of a socket or a child process (all optional)."""

    sockets: Any = None                         # fds.SocketOwners installed on the arena loop
    processes: Any = None                       # children.ProcessOwners installed on the arena loop
    brokers: dict[str, str] = field(default_factory=dict)   # "ip:port" → "kafka" / "nats"


class ResourceWatch:
    """Candidates and exits for descriptors and child processes, looked at by settle's poll."""

    def __init__(self, baseline_fds: frozenset[tuple[int, str]] | None,
                 baseline_children: frozenset[tuple[int, float]], attribution: Attribution | None = None,
                 *, at_close: bool = True, kinds: frozenset[str] | None = None) -> None:
        self.base_fds = baseline_fds
        self.base_children = baseline_children
        self.attribution = attribution or Attribution()
        #: which of ``sockets``, ``fds`` (every other descriptor) and ``processes`` are judged
        #: (None: all); one not judged is not waited for either
        self.kinds = kinds
        self.supported = baseline_fds is not None and (self._judges("sockets") or self._judges("fds"))
        self.fds: dict[tuple[int, str], fd_probe.Descriptor] = {}
        self.fds_at_close: set[tuple[int, str]] = set()
        self.procs: dict[tuple[int, float], proc_probe.Child] = {}
        self.exit_at: dict[object, float] = {}
        self._first = at_close
        self.ignored_pids: dict[int, str] = {}   # child pid → the rule that ignored it
        self._unjudged: set[tuple[int, str]] = set()  # new descriptors of a kind not judged
        #: the ignore rules while settling (set by the settle watch): ignored ones are not waited for
        self.rules: IgnoreRules | None = None
        #: what opens or starts after the first look is a candidate too (False: a verdict while
        #: the program goes on, where that is its new work)
        self.accept_late = True

    def _judges(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds

    def _judged(self, d: fd_probe.Descriptor) -> bool:
        if d.fd in fd_probe.BUSMON_FDS:
            return False  # busmon's agent's own connection to a dashboard
        if d.kind == "file" and d.target.startswith((f"/proc/{os.getpid()}/", *_OWN_PROC)):
            return False  # this process reading its own /proc (psutil, busmon's sampler): a moment's read
        return self._judges("sockets" if d.kind in SOCKET_KINDS else "fds")

    # -- candidates -------------------------------------------------------------------

    def scan(self, now: float) -> bool:
        """Pick up new candidates and note exits; True while any candidate is still there."""
        pending = False
        first = self._first
        table = fd_probe.fd_table() if self.supported else None
        if table is not None and self.base_fds is not None:
            current = fd_probe.identities(table)
            new = [item for item in current - self.base_fds if item not in self.fds and item not in self._unjudged
                   and (first or self.accept_late)]
            if new:
                described = fd_probe.describe(table, [fd for fd, _ in new], owners=self.attribution.sockets,
                                              brokers=self.attribution.brokers)
                for item in new:
                    d = described.get(item[0])
                    if d is not None and d.target == item[1] and not self._judged(d):
                        self._unjudged.add(item)
                    elif d is not None and d.target == item[1]:
                        self.fds[item] = d
                        if self._first:
                            self.fds_at_close.add(item)
            for item, d in self.fds.items():
                if item in self.exit_at:
                    continue
                if item not in current:
                    self.exit_at[item] = now
                elif self.rules is None or not self.rules.socket_reason(d):
                    pending = True
        self._first = False
        if not self._judges("processes"):
            return pending
        kids = proc_probe.children()
        for key, child in kids.items():
            if key not in self.base_children and key not in self.procs and (first or self.accept_late):
                self.procs[key] = child
        for key in self.procs:
            if key in self.exit_at:
                continue
            now_child = kids.get(key)
            if now_child is None:
                self.exit_at[key] = now
            else:
                self.procs[key] = now_child  # keep the latest status (a zombie says so)
                if self.rules is None or not self.rules.process_reason(now_child):
                    pending = True
        return pending

    def child_of(self, pid: int) -> proc_probe.Child | None:
        return next((c for c in self.procs.values() if c.pid == pid), None)

    # -- verdict ---------------------------------------------------------------------------

    def note_ignored(self, rules: IgnoreRules) -> None:
        """Which children the rules ignore (before threads are judged: their waitpid threads
        follow them)."""
        for c in self.procs.values():
            if reason := rules.process_reason(c):
                self.ignored_pids[c.pid] = reason

    def judge(self, rules: IgnoreRules, ms: Callable[[float | None], float | None],
              after_gc: Callable[[], dict[int, str] | None] = fd_probe.fd_table,
              gc_closed: frozenset[int] | None = None, judged_at: float | None = None) -> list[Leftover]:
        """Classify every candidate. ``after_gc``: the descriptors open after the verdict's GC;
        ``gc_closed``: those the GC's finalizers closed unclosed (``busmon.probes.verdict.gc_closures``). A
        socket gone in between that the GC did not close, whose peer had closed (CLOSE_WAIT) or
        was a socket here the GC closed, was closed by its owner because the peer went: "closed
        by the peer" at ``judged_at``, not the GC's doing."""
        self.note_ignored(rules)
        out: list[Leftover] = []
        table = after_gc() if self.supported else None
        still = fd_probe.identities(table) if table is not None else set()
        if table is not None and gc_closed:
            table, still, judged_at = self._peers_closing(after_gc, table, still, gc_closed, judged_at)
        for item, d in self.fds.items():
            after = self.exit_at.get(item)
            sock = d.kind in SOCKET_KINDS
            if after is None and table is not None and item not in still:
                if (gc_closed is not None and d.fd not in gc_closed and sock
                        and (d.status == "CLOSE_WAIT" or self._peer_collected(d, gc_closed))):
                    state, after = "exited", judged_at
                    detail = "closed by the peer: its owner closed it once the other end went"
                else:  # the GC said it closed it, or nothing shows anyone else did
                    state, detail = "destroyed", "closed only by the garbage collector: nothing called close()"
            elif after is not None:
                if item not in self.fds_at_close and not sock and d.kind in ("file", "device"):
                    continue  # a file someone opened and closed while we settled: never the bus's
                state, detail = "exited", ""
            else:
                state, detail = "leaked", ""
                if sock and gc_closed and self._peer_collected(d, gc_closed):
                    detail = "its peer was closed by the garbage collector; its owner has not closed it"
            child = self._pipe_child(d) if d.kind == "pipe" else None
            reason = rules.socket_reason(d)
            if reason is None and child is not None and child.pid in self.ignored_pids:
                reason = f"the pipe of ignored child pid {child.pid}"
            if reason and state != "exited":
                state = "ignored"
                detail = reason
            facts = ([f"fd {d.fd}"] + ([f"local {d.local}"] if sock and d.local and d.peer else [])
                     + ([d.status] if d.status else []) + ([detail] if detail else []))
            if d.status == "CLOSE_WAIT":
                facts.append("the peer closed its end; this process never closed its own")
            component = d.component
            if child is not None:
                facts.append(f"shared with child pid {child.pid} ({child.short(50)})")
                component = self._process_component(child)
            # a socket is named by where it goes (its local end and state are in the detail)
            name = f"{d.kind} → {d.peer}" if sock and d.peer else d.label()
            out.append(Leftover("socket" if sock else "fd", name, component, state, ms(after), (),
                                d.created_at, ", ".join(facts)))
        for key, c in self.procs.items():
            after = self.exit_at.get(key)
            owner = self.attribution.processes.owner(c.pid) if self.attribution.processes else None
            component = self._process_component(c)
            reason = self.ignored_pids.get(c.pid)
            if after is not None:
                state, facts = "exited", []
            elif reason:
                state, facts = "ignored", [reason]
            else:
                state = "leaked"
                facts = ["a zombie: it exited, but nothing waited for it"] if c.zombie else [f"still {c.status}"]
            out.append(Leftover("process", f"pid {c.pid}: {c.short(50)}", component, state,
                                ms(after), (),
                                owner[1] if owner else None, ", ".join([f"pid {c.pid}", *facts, f"command: {c.cmdline}"])))
        return out

    def _peers_closing(self, after_gc: Callable[[], dict[int, str] | None], table: dict[int, str],
                       still: set, gc_closed: frozenset[int], judged_at: float | None
                       ) -> tuple[dict[int, str], set, float | None]:
        """The other ends of the sockets the GC just closed: their owners (a server thread) close
        them once they see the peer go. Looked at again, for at most ``PEER_GRACE_S``, until they
        have: only then is it known who closed them."""
        def waiting(still: set) -> bool:
            return any(item in still and self._peer_collected(d, gc_closed) for item, d in self.fds.items()
                       if d.kind in SOCKET_KINDS and self.exit_at.get(item) is None)

        deadline = time.monotonic() + PEER_GRACE_S
        while waiting(still) and time.monotonic() < deadline:
            time.sleep(0.002)  # the poll interval of this short wait: a socket's close has no event
            if (again := after_gc()) is None:
                break
            table, still = again, fd_probe.identities(again)
            judged_at = time.monotonic()
        return table, still, judged_at

    def _peer_collected(self, d: fd_probe.Descriptor, gc_closed: frozenset[int]) -> bool:
        """The socket's peer is a socket of this process that the GC closed (a loopback pair)."""
        return any(o.fd in gc_closed and o.local == d.peer and o.peer == d.local for o in self.fds.values())

    def _process_component(self, c: proc_probe.Child) -> str:
        owner = self.attribution.processes.owner(c.pid) if self.attribution.processes else None
        return "process:" + (owner[0] if owner else c.program)

    def _pipe_child(self, d: fd_probe.Descriptor) -> proc_probe.Child | None:
        """The child process at the other end of a pipe (the usual leftover of a subprocess)."""
        for c in self.procs.values():
            try:
                for fd in os.listdir(f"/proc/{c.pid}/fd"):
                    if os.readlink(f"/proc/{c.pid}/fd/{fd}") == d.target:
                        return c
            except OSError:
                continue
        return None


def waitpid_pid(thread: threading.Thread) -> int | None:
    """The child asyncio's ``asyncio-waitpid-N`` thread (ThreadedChildWatcher) waits for: its
    second argument (N is only a counter)."""
    target = getattr(thread, "_target", None)
    args = getattr(thread, "_args", ())
    if getattr(target, "__name__", "") != "_do_waitpid" or len(args) < 2 or type(args[1]) is not int:
        return None
    return args[1]


def waitpid_detail(thread: threading.Thread, watch: ResourceWatch | None) -> str | None:
    """asyncio's ``asyncio-waitpid-N`` thread (ThreadedChildWatcher) waits for one child: name
    the child (its pid is the thread's second argument; N is only a counter)."""
    pid = waitpid_pid(thread)
    if pid is None:
        return None
    child = watch.child_of(pid) if watch is not None else None
    what = f"child process {pid}" + (f" ({child.short(60)})" if child else "")
    return f"asyncio waits here until {what} exits"


def brokers_of(backend: str, resolve: Iterable[tuple[str, int]] = ()) -> dict[str, str]:
    """``ip:port`` → backend for the broker addresses (already resolved by the caller)."""
    component = {"nats-js": "nats", "nats+js": "nats"}.get(backend, backend)
    out = {}
    for host, port in resolve:
        out[f"[{host}]:{port}" if ":" in host else f"{host}:{port}"] = component
    return out
