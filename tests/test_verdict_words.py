"""The words of a verdict say what happened: a socket *closed*, a task *exited*; busmon says it
*waited* only when something was there to wait for; "closed only by the garbage collector" only
when the collector closed it (its finalizer's ResourceWarning named the descriptor), while the
other end of that pair, closed by its owner once its peer went, is "closed by the peer"."""

from __future__ import annotations

import re
import socket
import threading

import pytest

from busmon.probes.verdict.gc_closures import collect_noting_closed_fds
from busmon.probes.watching.watch import watch
from tests.test_pytest_plugin import ASYNCIO_AUTO, run

pytest_plugins = ["pytester"]


def test_a_lingering_socket_closed_and_a_clean_test_with_nothing_to_wait_for(pytester: pytest.Pytester) -> None:
    result = run(pytester, """
        import asyncio, queue, socket, threading, time, pytest

        CLOSER = queue.SimpleQueue()

        def closes_later():  # a thread older than the test: only the socket is the test's
            while True:
                sock = CLOSER.get()
                time.sleep(0.05)   # the socket outlives the test by 50 ms (the behaviour under test)
                sock.close()

        threading.Thread(target=closes_later, daemon=True).start()

        @pytest.mark.busmon
        def test_socket_closed_soon_after():
            a, b = socket.socketpair()
            b.close()
            CLOSER.put(a)

        @pytest.mark.busmon
        async def test_uses_the_default_executor():
            await asyncio.to_thread(sum, [1, 2])     # leaves asyncio's idle executor thread
    """, "-rP", ini=ASYNCIO_AUTO)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "busmon: test_inline.py::test_socket_closed_soon_after is clean",
        "waited * ms (up to 2 s), after the test's teardown, for what it started to exit; *",
        "lingered (gone while busmon waited; not a failure):",
        "  socket unix *: closed after *ms",
    ])
    result.stdout.fnmatch_lines([
        "busmon: test_inline.py::test_uses_the_default_executor is clean",
        "nothing to wait for after the test's teardown; a plain count right at the end saw 0 new tasks and 1 new thread",
        "ignored:",
        "  thread asyncio_0*",
    ])
    assert "socket unix" not in "".join(l for l in result.stdout.lines if "exited after" in l)
    # the wait said is the wait for the socket: never shorter than its close (it read 0.0 ms)
    out = result.stdout.str()
    waited = float(re.search(r"waited ([\d,.]+) ms \(up to 2 s\)", out).group(1).replace(",", ""))
    closed = float(re.search(r"socket unix .*: closed after ([\d,.]+) ms", out).group(1).replace(",", ""))
    assert closed >= 40 and waited >= closed, (waited, closed)


class _Cycle:
    """Holds itself: only the garbage collector frees it (and the socket it holds)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.me = self


def test_the_collector_names_the_descriptors_it_closed() -> None:
    a, b = socket.socketpair()
    fd = a.fileno()
    _Cycle(a)
    del a
    closed = collect_noting_closed_fds()
    assert fd in closed
    b.close()
    c, d = socket.socketpair()
    fd = c.fileno()
    c.close()
    assert fd not in collect_noting_closed_fds()  # closed by code: never the collector's
    d.close()


def test_a_pair_whose_client_the_gc_closed_the_server_end_closed_by_the_peer() -> None:
    """The test drops a connected client in a reference cycle; the server thread, seeing EOF,
    closes its end. Only the client's socket is "closed only by the garbage collector"."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    served = threading.Event()
    done = threading.Event()

    def serve() -> None:
        conn, _ = listener.accept()
        served.set()
        while conn.recv(1024):
            pass
        conn.close()
        done.set()

    server = threading.Thread(target=serve, name="pair-server", daemon=True)
    server.start()
    with watch(on_leak="ignore", settle_timeout_s=0.2, judge=("sockets",)) as w:
        client = socket.create_connection(("127.0.0.1", port))
        assert served.wait(5)
        _Cycle(client)
        del client
    assert done.wait(5)
    server.join(5)
    listener.close()
    by_state = {(x.state, x.detail.rsplit(", ", 1)[-1]) for x in w.leftovers if x.kind == "socket"}
    assert ("destroyed", "closed only by the garbage collector: nothing called close()") in by_state, w.result.report()
    assert ("exited", "closed by the peer: its owner closed it once the other end went") in by_state, w.result.report()
    assert w.verdict == "leaked"   # the forgotten client is still the code's leak



def test_this_process_reading_its_own_proc_files_is_never_a_leftover() -> None:
    """psutil (busmon's sampler among its users) opens /proc/<pid>/stat for a moment: seen open at
    close, it was judged 'exited' as the run's file (once in a full suite's run)."""
    import os

    from busmon.probes.observe.fds import Descriptor
    from busmon.probes.verdict.resources import ResourceWatch

    watch = ResourceWatch(frozenset(), frozenset())
    assert not watch._judged(Descriptor(7, f"/proc/{os.getpid()}/stat", "file"))
    assert not watch._judged(Descriptor(7, "/proc/self/status", "file"))
    assert watch._judged(Descriptor(7, "/proc/1/stat", "file"))        # another process's: still judged
    assert watch._judged(Descriptor(7, "/tmp/data.bin", "file"))
