"""The descriptor probe: the fd table by identity, what each descriptor is, who opened each socket.

Real descriptors and loopback sockets only; waits are on readiness or a polled condition
with a deadline, never a sleep.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import select
import socket
import sys
from typing import Iterator

import pytest

from busmon.probes.observe.fds import (SUPPORTED, WRAPPED, Descriptor, SocketOwners, describe, fd_table, identities,
                        identity, new_sockets, socket_inode)
from tests.helpers import poll

pytestmark = pytest.mark.skipif(not SUPPORTED, reason="needs Linux /proc/self/fd")

HERE = "tests/test_fds_probe.py"


def next_line() -> int:
    """The line after the caller's: where the statement under test is."""
    return sys._getframe(1).f_lineno + 1


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server
    server.close()


def table() -> dict[int, str]:
    t = fd_table()
    assert t is not None
    return t


def one(fd: int, **kw) -> Descriptor:
    return describe(table(), [fd], **kw)[fd]


# -- the table ----------------------------------------------------------------------------

def test_fd_table_sees_new_descriptors_and_forgets_closed_ones(tmp_path, listener):
    before = table()
    r, w = os.pipe()
    log = open(tmp_path / "x.log", "w")
    client = socket.create_connection(listener.getsockname())
    try:
        during = table()
        assert during[r].startswith("pipe:[") and during[w] == during[r]
        assert during[log.fileno()] == str(tmp_path / "x.log")
        assert during[client.fileno()].startswith("socket:[")
        assert socket_inode(during[client.fileno()]) == os.fstat(client.fileno()).st_ino
        assert {fd for fd, _ in identities(during) - identities(before)} == {r, w, log.fileno(), client.fileno()}
        assert new_sockets(identities(during), identities(before)) == 1
        opened = {identity(fd, during[fd]) for fd in (r, w, log.fileno(), client.fileno())}
    finally:
        os.close(r)
        os.close(w)
        log.close()
        client.close()
    after = table()
    assert not opened & identities(after)
    assert identities(after) - identities(before) == set()
    # looks at the table (listdir's own, this one's, another thread's) are never reported
    assert not any(t == f"/proc/{os.getpid()}/fd" for t in after.values())
    look = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert look not in table()
    finally:
        os.close(look)


def test_a_reused_number_pointing_elsewhere_is_a_new_descriptor():
    r1, w1 = os.pipe()
    first = table()
    os.close(r1)
    os.close(w1)
    r2, w2 = os.pipe()
    try:
        assert r2 == r1, "the kernel hands out the lowest free number"
        second = table()
        assert first[r1] != second[r2]
        assert identity(r1, first[r1]) != identity(r2, second[r2])
        assert identity(r2, second[r2]) not in identities(first)
        assert r2 in {fd for fd, _ in identities(second) - identities(first)}
    finally:
        os.close(r2)
        os.close(w2)


# -- what a descriptor is -----------------------------------------------------------------

async def test_tcp_connection_opened_on_the_loop_is_attributed_to_its_caller(listener):
    port = listener.getsockname()[1]
    owners = SocketOwners()
    owners.install(asyncio.get_running_loop())
    try:
        line = next_line()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        accepted, _ = listener.accept()
    finally:
        owners.uninstall()
    try:
        fd = writer.get_extra_info("socket").fileno()
        local_port = writer.get_extra_info("sockname")[1]
        d = one(fd, owners=owners)
        assert (d.kind, d.local, d.peer, d.status) == ("tcp", f"127.0.0.1:{local_port}",
                                                       f"127.0.0.1:{port}", "ESTABLISHED")
        assert d.component == "tests"
        assert d.created_at == f"{HERE}:{line} in test_tcp_connection_opened_on_the_loop_is_attributed_to_its_caller"
        assert d.label() == f"tcp 127.0.0.1:{local_port} → 127.0.0.1:{port} ESTABLISHED"
        # the accepted end was not made through the loop: nothing knows its owner
        server_end = one(accepted.fileno(), owners=owners)
        assert server_end.status == "ESTABLISHED" and server_end.component == "unknown"
    finally:
        accepted.close()
        writer.close()
        await writer.wait_closed()


async def test_connection_made_inside_wait_for_names_the_awaiting_code(listener):
    """nats-py's path: open_connection runs in wait_for's own task, so the caller is not on
    the stack; the task awaiting that one is."""
    port = listener.getsockname()[1]
    owners = SocketOwners()
    owners.install(asyncio.get_running_loop())
    try:
        line = next_line()
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    finally:
        owners.uninstall()
    try:
        d = one(writer.get_extra_info("socket").fileno(), owners=owners)
        assert d.component == "tests"
        assert d.created_at == f"{HERE}:{line} in test_connection_made_inside_wait_for_names_the_awaiting_code"
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_socket_to_a_broker_address_is_the_brokers_when_nothing_better_is_known(listener):
    port = listener.getsockname()[1]
    owners = SocketOwners()
    owners.install(asyncio.get_running_loop())
    plain = socket.create_connection(("127.0.0.1", port))  # not through the loop
    try:
        d = one(plain.fileno(), owners=owners, brokers={f"127.0.0.1:{port}": "kafka"})
        assert (d.kind, d.component, d.created_at) == ("tcp", "kafka", None)
        assert one(plain.fileno(), owners=owners).component == "unknown"
    finally:
        owners.uninstall()
        plain.close()


def test_a_socket_the_peer_closed_is_close_wait(listener):
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    try:
        accepted.close()
        readable, _, _ = select.select([client], [], [], 5.0)  # the peer's FIN arrived
        assert readable
        d = poll(lambda: (x := one(client.fileno())).status == "CLOSE_WAIT" and x, "CLOSE_WAIT", 5.0)
        assert d.label().endswith("CLOSE_WAIT")
    finally:
        client.close()


async def test_udp_endpoint_and_unix_sockets(tmp_path):
    loop = asyncio.get_running_loop()
    owners = SocketOwners()
    owners.install(loop)
    path = str(tmp_path / "s.sock")
    try:
        udp_line = next_line()
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                           local_addr=("127.0.0.1", 0))
        server = await asyncio.start_unix_server(lambda r, w: None, path)
    finally:
        owners.uninstall()
    a, b = socket.socketpair()
    try:
        fd = transport.get_extra_info("socket").fileno()
        udp = one(fd, owners=owners)
        port = transport.get_extra_info("sockname")[1]
        assert (udp.kind, udp.local, udp.peer, udp.status) == ("udp", f"127.0.0.1:{port}", None, None)
        assert udp.component == "tests" and udp.created_at.startswith(f"{HERE}:{udp_line} in ")
        assert udp.label() == f"udp 127.0.0.1:{port}"
        unix_server = one(server.sockets[0].fileno(), owners=owners)
        assert (unix_server.kind, unix_server.local, unix_server.component) == ("unix", path, "tests")
        pair = describe(table(), [a.fileno(), b.fileno()])
        assert {d.kind for d in pair.values()} == {"unix"}
        assert pair[a.fileno()].label() == f"unix {pair[a.fileno()].target}"
    finally:
        a.close()
        b.close()
        transport.close()
        server.close()
        await server.wait_closed()


async def test_selector_map_names_the_protocol_of_an_unrecorded_connection(listener):
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(TestProtocol, *listener.getsockname())
    accepted, _ = listener.accept()
    owners = SocketOwners()
    owners.install(loop)  # after the connection: only the selector map can tell
    try:
        fd = transport.get_extra_info("socket").fileno()
        d = one(fd, owners=owners)
        assert (d.component, d.created_at) == ("tests", None)
        owners.uninstall()  # the verdict may come after: the loop's map is still read
        assert one(fd, owners=owners).component == "tests"
    finally:
        owners.uninstall()
        accepted.close()
        transport.close()


class TestProtocol(asyncio.Protocol):
    __test__ = False


def test_kinds_of_other_descriptors(tmp_path):
    (tmp_path / "x.log").write_text("")
    devnull = open(os.devnull, "rb")
    log = open(tmp_path / "x.log")
    r, w = os.pipe()
    efd = os.eventfd(0)
    ep = select.epoll()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fifo_fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    loose = socket.socket()  # never bound: psutil does not list it, the socket itself tells
    loop = asyncio.new_event_loop()
    try:
        loop_epoll = loop._selector.fileno()
        fds = [devnull.fileno(), log.fileno(), r, efd, ep.fileno(), loop_epoll, fifo_fd, loose.fileno()]
        got = describe(table(), fds)
        kinds = [got[fd].kind for fd in fds]
        assert kinds == ["device", "file", "pipe", "eventfd", "epoll", "epoll", "pipe", "tcp"]
        assert got[devnull.fileno()].label() == "device /dev/null"
        assert got[log.fileno()].label() == f"file {tmp_path / 'x.log'}"
        assert got[r].label() == got[r].target and got[r].target.startswith("pipe:[")
        assert got[efd].label() == "eventfd"
        assert got[loose.fileno()].status == "CLOSE"
        assert all(d.component == "unknown" for d in got.values())
        assert describe(table(), [10**6]) == {}  # not in the table: not described
    finally:
        loop.close()
        loose.close()
        os.close(fifo_fd)
        ep.close()
        os.close(efd)
        os.close(r)
        os.close(w)
        log.close()
        devnull.close()


def test_labels():
    assert Descriptor(9, "socket:[1]", "tcp", "[::1]:5", "[::1]:9092", "ESTABLISHED").label() \
        == "tcp [::1]:5 → [::1]:9092 ESTABLISHED"
    assert Descriptor(9, "socket:[1]", "tcp", "127.0.0.1:5", None, "LISTEN").label() == "tcp 127.0.0.1:5 LISTEN"
    assert Descriptor(9, "socket:[1]", "socket").label() == "socket:[1]"
    assert Descriptor(9, "anon_inode:[io_uring]", "anon").label() == "anon_inode:[io_uring]"


# -- SocketOwners keeps the loop's behaviour ------------------------------------------------

def test_uninstall_restores_the_loops_methods():
    loop = asyncio.new_event_loop()
    try:
        originals = {name: getattr(loop, name) for name in WRAPPED}
        owners = SocketOwners()
        owners.install(loop)
        for name in WRAPPED:
            wrapped = getattr(loop, name)
            assert wrapped != originals[name] and name in vars(loop)
            assert inspect.signature(wrapped) == inspect.signature(originals[name])
            assert inspect.iscoroutinefunction(wrapped) and asyncio.iscoroutinefunction(wrapped)
            assert wrapped.__name__ == name
        owners.uninstall()
        for name in WRAPPED:
            assert name not in vars(loop)
            assert getattr(loop, name) == originals[name]
        # an instance attribute that was there before comes back
        marker = originals["sock_connect"]
        loop.sock_connect = marker
        owners.install(loop)
        assert loop.sock_connect is not marker
        owners.uninstall()
        assert vars(loop)["sock_connect"] is marker
    finally:
        loop.close()


async def test_wrappers_return_what_the_loop_returns(listener, tmp_path):
    loop = asyncio.get_running_loop()
    made: list[asyncio.BaseProtocol] = []

    def factory(kind=asyncio.Protocol):
        made.append(kind())
        return made[-1]

    owners = SocketOwners()
    owners.install(loop)
    closing = []
    try:
        transport, protocol = await loop.create_connection(factory, *listener.getsockname())
        closing.append(transport)
        assert protocol is made[-1] and transport.get_protocol() is protocol
        assert type(transport).__module__.startswith("asyncio.")
        dgram, dproto = await loop.create_datagram_endpoint(lambda: factory(asyncio.DatagramProtocol),
                                                            local_addr=("127.0.0.1", 0))
        closing.append(dgram)
        assert dproto is made[-1]
        server = await loop.create_server(factory, "127.0.0.1", 0)
        closing.append(server)
        assert isinstance(server, asyncio.Server) and server.sockets
        userver = await loop.create_unix_server(factory, str(tmp_path / "u.sock"))
        closing.append(userver)
        utransport, uproto = await loop.create_unix_connection(factory, str(tmp_path / "u.sock"))
        closing.append(utransport)
        assert uproto is made[-1]
        sock = socket.socket()
        sock.setblocking(False)
        closing.append(sock)
        assert await loop.sock_connect(sock, listener.getsockname()) is None
        with socket.socket() as probe:  # a port nobody listens on: the same error comes out
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", closed_port)
        # each socket made was noted, with this test as its owner
        fds = [transport.get_extra_info("socket").fileno(), dgram.get_extra_info("socket").fileno(),
               server.sockets[0].fileno(), userver.sockets[0].fileno(),
               utransport.get_extra_info("socket").fileno(), sock.fileno()]
        t = table()
        assert [owners.owner(t[fd])[0] for fd in fds] == ["tests"] * len(fds)
    finally:
        owners.uninstall()
        for c in closing:
            c.close()
        for c in closing:
            if isinstance(c, asyncio.Server):
                await c.wait_closed()


def test_owner_records_are_bounded_and_pruned_of_closed_sockets():
    owners = SocketOwners(limit=4)
    a, b = socket.socketpair()
    c, d, e = socket.socket(), socket.socket(), socket.socket()
    try:
        gone = socket_inode(table()[a.fileno()])
        for i, s in enumerate((a, b, c, d)):
            owners.note(s, (f"c{i}", f"m.py:{i} in f"))
        assert len(owners) == 4
        a.close()
        owners.note(e, ("c4", None))  # over the limit: the closed one goes, then the oldest
        assert len(owners) == 3
        assert owners.owner(f"socket:[{gone}]") is None
        t = table()
        assert owners.owner(t[b.fileno()]) is None
        assert [owners.owner(t[s.fileno()]) for s in (c, d, e)] == [
            ("c2", "m.py:2 in f"), ("c3", "m.py:3 in f"), ("c4", None)]
    finally:
        for s in (a, b, c, d, e):
            s.close()
