"""Open file descriptors and sockets, judged by identity: what a bus left open after close.

A descriptor's identity is its number *and* what it points to (``/proc/self/fd/N``'s
link), so a number the kernel reused for something else counts as a new descriptor.
Reading the table is cheap (listdir + readlink) because settle polls it every ~10 ms;
describing (addresses, TCP state, owner) costs more and is done only for candidates.

Who opened a socket is recorded at creation by :class:`SocketOwners`, which wraps the
arena loop's connection methods (busmon owns that loop). Without a record, the loop's
selector map or a broker address may still name the owner.

Linux only (``/proc``); elsewhere :func:`fd_table` returns None and nothing is judged.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import socket
import stat
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import AbstractSet, Any, Callable, Iterable, Mapping

import psutil

from busmon.bus import deadline
from busmon.bus.deadline import short_where

_FD_DIR = "/proc/self/fd"


def _readable() -> bool:
    try:
        os.listdir(_FD_DIR)
    except OSError:
        return False
    return True


#: whether open descriptors can be read here (Linux ``/proc``)
SUPPORTED: bool = _readable()
#: shown instead of a descriptor verdict where :data:`SUPPORTED` is False
UNSUPPORTED_NOTE = "open descriptors are not judged here: needs Linux /proc"

#: descriptors busmon's own machinery holds in a program it watches (an attached dashboard's
#: connection to the agent), added and removed by their holder: never the program's leftovers
BUSMON_FDS: set[int] = set()


def fd_table() -> dict[int, str] | None:
    """fd -> what it points to (``socket:[123]``, ``pipe:[45]``, ``/path``, ``anon_inode:[eventpoll]``).

    None where unsupported, and also when the table cannot be read right now (the process
    is out of descriptors: reading it needs one). Descriptors closed between listdir and
    readlink are skipped (listdir's own is always one). Descriptors on this very directory
    are left out: they are a look at the table (this one's, or another thread's), not the
    bus's. readlink relative to an open directory skips resolving /proc/self (~25% faster).
    """
    if not SUPPORTED:
        return None
    try:
        directory = os.open(_FD_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        table: dict[int, str] = {}
        readlink = os.readlink
        own = f"/proc/{os.getpid()}/fd"
        for name in os.listdir(directory):
            try:
                target = readlink(name, dir_fd=directory)
            except OSError:
                continue
            if target != own:
                table[int(name)] = target
        return table
    except OSError:
        return None
    finally:
        os.close(directory)


def identity(fd: int, target: str) -> tuple[int, str]:
    """The descriptor plus what it points to: a reused number pointing elsewhere is new.

    Limits, kept for cheapness (no stat per descriptor): sockets and pipes carry a unique
    inode in their target, but anonymous inodes (eventfd, epoll, timerfd, ...) all share one
    name, and a file reopened at the same number and path between two looks looks the same.
    """
    return (fd, target)


def identities(table: Mapping[int, str]) -> set[tuple[int, str]]:
    return {identity(fd, target) for fd, target in table.items()}


def new_sockets(current: Iterable[tuple[int, str]], baseline: AbstractSet[tuple[int, str]]) -> int:
    """Sockets among the ``current`` identities that the ``baseline`` identities lack."""
    return sum(1 for item in current if item[1].startswith("socket:") and item not in baseline
               and item[0] not in BUSMON_FDS)


def socket_inode(target: str) -> int | None:
    """N of ``socket:[N]`` (what ``os.fstat(sock.fileno()).st_ino`` gives), else None."""
    if target.startswith("socket:[") and target.endswith("]"):
        try:
            return int(target[8:-1])
        except ValueError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class Descriptor:
    fd: int
    target: str
    #: tcp, udp, unix, socket (other family), pipe, file, device, eventfd, epoll, timerfd,
    #: signalfd, inotify, anon (other anonymous inode)
    kind: str
    local: str | None = None     # "127.0.0.1:53422", "[::1]:53422", a unix path
    peer: str | None = None      # "127.0.0.1:9092"
    status: str | None = None    # TCP state: ESTABLISHED, CLOSE_WAIT, LISTEN, ...
    component: str = "unknown"   # who owns it; "unknown" when it cannot be known
    created_at: str | None = None  # 'package/module.py:12 in fn' when recorded

    def label(self) -> str:
        """One short line (without the fd number): ``tcp 127.0.0.1:53422 → 127.0.0.1:9092 ESTABLISHED``."""
        if self.kind in _SOCKET_KINDS:
            head = f"{self.kind} {self.local}" if self.local else (
                self.target if self.kind == "socket" else f"{self.kind} {self.target}")
            peer = f" → {self.peer}" if self.peer else ""
            status = f" {self.status}" if self.status else ""
            return head + peer + status
        if self.kind in ("file", "device") or (self.kind == "pipe" and self.target.startswith("/")):
            return f"{self.kind} {self.target}"
        if self.kind in _ANON_KINDS.values():
            return self.kind
        return self.target


_SOCKET_KINDS = ("tcp", "udp", "unix", "socket")
_ANON_KINDS = {"eventfd": "eventfd", "eventpoll": "epoll", "timerfd": "timerfd",
               "signalfd": "signalfd", "inotify": "inotify"}


def target_kind(fd: int, target: str) -> str:
    """The kind a target names; paths are stat-ed (through /proc, so deleted files work too)."""
    if target.startswith("socket:"):
        return "socket"
    if target.startswith("pipe:"):
        return "pipe"
    if target.startswith("anon_inode:"):
        return _ANON_KINDS.get(target[len("anon_inode:"):].strip("[]"), "anon")
    if not target.startswith("/"):
        return "anon"  # pidfd:, net:[...], and other pseudo files
    try:
        mode = os.stat(f"{_FD_DIR}/{fd}").st_mode
    except OSError:
        return "device" if target.startswith("/dev/") else "file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "pipe" if stat.S_ISFIFO(mode) else "file"


def describe(table: Mapping[int, str], fds: Iterable[int], *, owners: SocketOwners | None = None,
             brokers: Mapping[str, str] | None = None) -> dict[int, Descriptor]:
    """Describe the given fds (candidates only).

    Sockets get addresses and TCP state from the socket itself (getsockname, getpeername,
    TCP_INFO), falling back to psutil's ``net_connections`` for one that will not say. Owner: what ``owners`` recorded (or its loop's selector map names), else
    the broker a socket's peer is (``brokers``: 'ip:port' -> component), else "unknown".
    """
    wanted = {fd: table[fd] for fd in fds if fd in table}
    out: dict[int, Descriptor] = {}
    conns: dict[int, _Conn] | None = None
    for fd, target in wanted.items():
        if not target.startswith("socket:"):
            out[fd] = Descriptor(fd, target, target_kind(fd, target))
            continue
        # the socket itself first (~12 µs); psutil's scan of /proc/net costs ~11 ms a call,
        # paid only for a socket that would not say (another family, a default timeout set)
        kind, local, peer, status = _probe_socket(fd, target)
        if kind == "socket" and local is None:
            conns = _connections() if conns is None else conns
            conn = conns.get(fd)
            if conn is not None and _still(fd, target):
                kind, local, peer, status = conn
        component, site = "unknown", None
        hit = owners.owner(target, fd) if owners is not None else None
        if hit is not None:
            component, site = hit
        elif brokers and peer and (broker := _broker(brokers, peer)) is not None:
            component = broker
        out[fd] = Descriptor(fd, target, kind, local, peer, status, component, site)
    return out


_Conn = tuple[str, str | None, str | None, str | None]  # kind, local, peer, status


def _connections() -> dict[int, _Conn]:
    """This process's sockets by fd, from one psutil scan (empty if psutil cannot tell)."""
    try:
        conns = psutil.Process().net_connections(kind="all")
    except (psutil.Error, OSError):
        return {}
    out: dict[int, _Conn] = {}
    for c in conns:
        if c.fd is None or c.fd < 0:
            continue
        kind = _family_kind(c.family, c.type)
        status = c.status if c.status and c.status != psutil.CONN_NONE else None
        out[c.fd] = (kind, _format(c.laddr), _format(c.raddr), status)
    return out


def _still(fd: int, target: str) -> bool:
    """The fd still points to ``target`` (psutil read the table again, later than ours)."""
    try:
        return os.readlink(f"{_FD_DIR}/{fd}") == target
    except OSError:
        return False


def _family_kind(family: int, type_: int) -> str:
    if family in (socket.AF_INET, socket.AF_INET6):
        return {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}.get(type_, "socket")
    return "unix" if family == socket.AF_UNIX else "socket"


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _format(addr: Any) -> str | None:
    """psutil's (ip, port) or unix path as text; None when there is none."""
    if not addr:
        return None
    if isinstance(addr, str):
        return addr.replace("\x00", "@")
    if isinstance(addr, bytes):
        return addr.decode(errors="replace").replace("\x00", "@") or None
    try:
        host, port = addr[0], addr[1]
    except (TypeError, IndexError):
        return str(addr)
    return _address(str(host), int(port))


def _broker(brokers: Mapping[str, str], peer: str) -> str | None:
    """The broker component for a formatted peer; keys may be 'ip:port' or '[v6]:port'."""
    host, _, port = peer.rpartition(":")
    bare = host.strip("[]")
    keys = [peer, f"{bare}:{port}"]
    if bare.startswith("::ffff:") and "." in bare:
        keys.append(f"{bare[7:]}:{port}")
    for key in keys:
        if key in brokers:
            return brokers[key]
    return None


#: Linux TCP states (include/net/tcp_states.h), named as psutil names them
_TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
               6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


def _probe_socket(fd: int, target: str) -> _Conn:
    """Ask the socket itself, for what psutil did not list (unbound sockets, other families).

    ``socket.socket(fileno=fd)`` adopts the fd without dup-ing it and ``detach`` gives it back
    unclosed. Skipped when a default timeout is set: adopting would then make the socket
    non-blocking for its owner too.
    """
    if socket.getdefaulttimeout() is not None or not _still(fd, target):
        return ("socket", None, None, None)
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return ("socket", None, None, None)
    try:
        kind = _family_kind(sock.family, sock.type)
        local = _sockname(sock.getsockname)
        peer = _sockname(sock.getpeername)
        status = None
        if kind == "tcp" and hasattr(socket, "TCP_INFO"):
            try:
                status = _TCP_STATES.get(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0])
            except OSError:
                pass
        return (kind, local, peer, status)
    finally:
        sock.detach()


def _sockname(get: Callable[[], Any]) -> str | None:
    try:
        return _format(get())
    except OSError:
        return None


# -- who opened each socket ---------------------------------------------------------------

_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
_PROBES_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # all of busmon.probes
#: deadline.bounded runs a call in a task of its own: the call's code is the owner
_DEADLINE_FILE = os.path.abspath(deadline.__file__)

Owner = tuple[str, str | None]  # (component, creation site)


def _skipped(filename: str) -> bool:
    if not os.path.isabs(filename):
        filename = os.path.abspath(filename)
    return filename.startswith((_ASYNCIO_DIR, _PROBES_DIR)) or filename == _DEADLINE_FILE


def _frame_owner(frame: Any) -> Owner:
    code = frame.f_code
    where = short_where(code.co_filename, frame.f_lineno, code.co_name)
    module = frame.f_globals.get("__name__") or ""
    if not module or module == "__main__":
        module = where.split(":", 1)[0].split("/", 1)[0].removesuffix(".py")
    return module.split(".", 1)[0], where


#: code flags of frames that can await: the caller chain of a loop method ends where they end
_AWAITING = inspect.CO_COROUTINE | inspect.CO_GENERATOR | inspect.CO_ITERABLE_COROUTINE


def caller_owner(depth: int = 1) -> Owner | None:
    """Component and site of the first awaiting frame outside asyncio and probes/ above the caller.

    Only the await chain counts: above it is the loop running the task (and whoever runs the
    loop), which did not ask for anything. When the call runs in a task of its own
    (``wait_for(open_connection(...))``: nats-py) the chain is asyncio's alone; then the task
    that awaits this one is read instead.
    """
    frame: Any = sys._getframe(depth + 1)
    while frame is not None and frame.f_code.co_flags & _AWAITING:
        if not _skipped(frame.f_code.co_filename):
            return _frame_owner(frame)
        frame = frame.f_back
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return None
    return _awaiter_owner(task) if task is not None else None


def _awaiter_owner(task: asyncio.Future, limit: int = 8) -> Owner | None:
    """The innermost non-asyncio frame of the tasks awaiting ``task``, directly or through a
    waiter future (wait_for's), breadth first, reading at most ``limit`` futures."""
    todo: list[asyncio.Future] = [task]
    seen: set[int] = set()
    while todo and len(seen) < limit:
        fut = todo.pop(0)
        if id(fut) in seen:
            continue
        seen.add(id(fut))
        for callback, _ctx in getattr(fut, "_callbacks", None) or ():
            waiter = getattr(callback, "__self__", None)
            if isinstance(waiter, asyncio.Task):
                frames = _coro_frames(waiter.get_coro())
                for frame in reversed(frames):
                    if not _skipped(frame.f_code.co_filename):
                        return _frame_owner(frame)
                todo.append(waiter)
            elif isinstance(callback, functools.partial):
                todo.extend(a for a in callback.args if isinstance(a, asyncio.Future))
    return None


def _coro_frames(coro: Any, limit: int = 32) -> list[Any]:
    """Frames of a suspended coroutine's await chain, outermost first."""
    frames: list[Any] = []
    while coro is not None and len(frames) < limit:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append(frame)
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return frames


def _result_sockets(name: str, result: Any, args: tuple, kwargs: dict) -> list[Any]:
    """The sockets a wrapped loop method created (or, for sock_connect, was given)."""
    if name == "sock_connect":
        sock = args[0] if args else kwargs.get("sock")
        return [sock] if sock is not None else []
    if name in ("create_server", "create_unix_server"):
        return list(getattr(result, "sockets", None) or ())
    transport = result[0] if isinstance(result, tuple) and result else None
    sock = transport.get_extra_info("socket") if transport is not None else None
    return [sock] if sock is not None else []


WRAPPED = ("create_connection", "create_unix_connection", "create_datagram_endpoint",
           "create_server", "create_unix_server", "sock_connect")


class SocketOwners:
    """Who opened each socket on one event loop (the arena's: busmon owns it).

    :meth:`install` wraps the loop's socket-making methods on the instance; each call notes
    the new socket's inode with the caller's component and creation site. Only ints and
    strings are kept (no transport stays alive because of this); past ``limit`` entries,
    those whose socket is gone are pruned, then the oldest (see :meth:`_prune`).
    """

    def __init__(self, limit: int = 4096) -> None:
        self.limit = limit
        self._owners: dict[int, Owner] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last: weakref.ref[asyncio.AbstractEventLoop] | None = None  # for the selector map
        self._installed: dict[str, Callable[..., Any]] = {}  # name -> our wrapper
        self._previous: dict[str, Any] = {}  # name -> instance attribute we replaced, if any

    @property
    def installed(self) -> bool:
        return self._loop is not None

    def __len__(self) -> int:
        return len(self._owners)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wrap ``loop``'s socket-making methods. A loop whose instance takes no attributes
        (uvloop's) is left alone: nothing is recorded, the selector fallback is all there is."""
        if self._loop is not None:
            raise RuntimeError("SocketOwners is already installed on a loop")
        deadline.add_machinery(deadline.short_file(__file__))  # its wrapper is never where a call is stuck
        own = getattr(loop, "__dict__", {})
        for name in WRAPPED:
            original = getattr(loop, name, None)
            if original is None:
                continue
            had = name in own
            wrapper = self._wrap(name, original)
            try:
                setattr(loop, name, wrapper)
            except (AttributeError, TypeError):
                continue
            if had:
                self._previous[name] = original
            self._installed[name] = wrapper
        self._loop = loop
        self._last = weakref.ref(loop)

    def uninstall(self) -> None:
        """Put the loop's methods back (a wrapper someone put over ours is left in place).
        What was recorded stays readable, and so does the loop's selector map while it lives."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        own = getattr(loop, "__dict__", {})
        for name, wrapper in self._installed.items():
            if own.get(name) is not wrapper:
                continue
            if name in self._previous:
                setattr(loop, name, self._previous[name])
            else:
                delattr(loop, name)
        self._installed.clear()
        self._previous.clear()

    def owner(self, target: str, fd: int | None = None) -> Owner | None:
        """(component, creation site) of a socket target; with ``fd``, falls back (site None)
        to the protocol the loop's selector serves on that fd."""
        inode = socket_inode(target)
        if inode is not None and (hit := self._owners.get(inode)) is not None:
            return hit
        loop = self._last() if self._last is not None else None
        if fd is not None and loop is not None and not loop.is_closed():
            return _selector_owner(loop, fd)
        return None

    def note(self, sock: Any, owner: Owner) -> None:
        """Record ``owner`` for ``sock`` (anything with fileno()): by inode, never the object."""
        try:
            inode = os.fstat(sock.fileno()).st_ino
        except (OSError, ValueError, AttributeError):
            return
        with self._lock:
            self._owners.pop(inode, None)
            self._owners[inode] = owner
            if len(self._owners) > self.limit:
                self._prune()

    def _prune(self) -> None:
        """Forget closed sockets; if that is not enough, the oldest, down to 3/4 of the limit
        (so a full table of live sockets is read at most once per limit/4 notes)."""
        table = fd_table()
        if table is not None:
            live = {socket_inode(t) for t in table.values()}
            for inode in [i for i in self._owners if i not in live]:
                del self._owners[inode]
        keep = self.limit * 3 // 4
        if len(self._owners) > keep:
            for inode in list(self._owners)[: len(self._owners) - keep]:
                del self._owners[inode]

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            owner = caller_owner(1) if self._loop is not None else None
            if owner is not None and name == "sock_connect":
                self._note_all(name, None, args, kwargs, owner)  # the socket exists already
            result = await original(*args, **kwargs)
            if owner is not None and name != "sock_connect":
                self._note_all(name, result, args, kwargs, owner)
            return result
        return wrapper

    def _note_all(self, name: str, result: Any, args: tuple, kwargs: dict, owner: Owner) -> None:
        try:
            for sock in _result_sockets(name, result, args, kwargs):
                self.note(sock, owner)
        except Exception:  # recording must never change the call's outcome
            pass


def _selector_owner(loop: asyncio.AbstractEventLoop, fd: int) -> Owner | None:
    """The owner a selector loop's map names for ``fd``: the module of the protocol (or
    server factory) behind its reader/writer callbacks, when that is not asyncio's own."""
    get_map = getattr(getattr(loop, "_selector", None), "get_map", None)
    if get_map is None:
        return None
    try:
        key = get_map().get(fd)
    except Exception:  # a private structure, perhaps read from another thread
        return None
    data = getattr(key, "data", None)
    for handle in data if isinstance(data, tuple) else (data,):
        callback = getattr(handle, "_callback", None)
        for obj in _owner_candidates(callback, getattr(handle, "_args", None) or ()):
            top = _top_package(obj)
            if top:
                return top, None
    return None


def _owner_candidates(callback: Any, args: tuple) -> list[Any]:
    """Objects whose module may name a socket's owner, best first: the application protocol
    (behind SSL), a stream's client callback, the transport, whatever object or function
    reads the fd, an accept loop's protocol factory."""
    out: list[Any] = []
    bound = getattr(callback, "__self__", None)
    if isinstance(bound, asyncio.BaseTransport):
        protocol = getattr(bound, "_protocol", None)
        app = getattr(protocol, "_app_protocol", None)  # asyncio's SSLProtocol wraps the real one
        for proto in (app, protocol):
            if proto is not None:
                out += [type(proto), getattr(proto, "_client_connected_cb", None)]
        out.append(type(bound))
    elif bound is not None and not isinstance(bound, asyncio.AbstractEventLoop):
        out.append(type(bound))
    elif bound is None and callback is not None:
        out.append(callback)
    if isinstance(bound, asyncio.AbstractEventLoop) and args and callable(args[0]):
        out.append(getattr(args[0], "func", args[0]))  # _accept_connection(protocol_factory, ...)
    return [o for o in out if o is not None]


def _top_package(obj: Any) -> str | None:
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        return None
    top = module.split(".", 1)[0]
    return None if top in ("asyncio", "builtins", "functools", "_asyncio", "uvloop") else top
