"""The NATS backends (nats-py): core subjects with queue groups, and JetStream.

nats-py cancels its own tasks on close without awaiting them; this backend
awaits them, so that when ``close()`` returns nothing it started is alive.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import re
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api as js_api

from busmon.bus.base import _STARTED, BaseBus, BaseSubscription, State
from busmon.bus.confirmations import Confirmations
from busmon.bus.codec import DecodeError, decode
from busmon.bus.envelope import Envelope
from busmon.bus.deadline import cancel_and_wait
from busmon.bus.connection import NatsSecurity
from busmon.bus.errors import BusConnectError, BusError, BusFault, BusRefusedError
from busmon.bus.refusal import address, nats_refusal
from busmon.bus.polling import PollingSubscription, count_undecodable, decode_batch
from busmon.bus.protocol import Handler

log = logging.getLogger("bus.nats")
_data_of = operator.attrgetter("data")


def client_tasks(nc: Client) -> list[asyncio.Task]:
    """The tasks nats-py keeps on a connection and its subscriptions.

    nats-py has no public accessor for them; it cancels them on close without
    awaiting, so we reach in to await them.
    """
    names = ("_reading_task", "_ping_interval_task", "_flusher_task", "_reconnection_task")
    tasks = [getattr(nc, n, None) for n in names]
    for sub in list(getattr(nc, "_subs", {}).values()):
        tasks.append(getattr(sub, "_wait_for_msgs_task", None))
    return [t for t in tasks if isinstance(t, asyncio.Task)]


def _on_tls(nc: Client) -> bool:
    """Is the connection encrypted? nats-py upgrades only when the server asks for TLS, and
    otherwise goes on in plaintext without a word, so a bus asked for TLS checks."""
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    return writer is not None and writer.get_extra_info("ssl_object") is not None


class NatsSubscription(BaseSubscription):
    """A core NATS subscription whose callback feeds the keyed pool."""

    bus: NatsBus

    def __init__(self, bus: NatsBus, topic: str, handler: Handler, group: str | None) -> None:
        super().__init__(bus, topic, handler, group)
        self.sub: Any = None
        self._stopped = False

    async def _on_msg(self, msg: Msg) -> None:
        """nats-py's subscription task calls this with one message; what else is pending on the
        subscription is taken in the same call and handed to the pool as one batch, so a burst
        pays nats-py's per-message hand-off (a queue get, a callback) and the pool's once."""
        bus, sub = self.bus, self.sub
        queue = getattr(sub, "_pending_queue", None)
        waiting = queue.qsize() if queue is not None else 0
        if not waiting:  # one message: straight to its worker
            try:
                envelope = decode(msg.data)
            except DecodeError as exc:
                count_undecodable(bus, exc, self.topic)
                return
            if not bus.pool.offer(self, envelope):
                await bus.pool.submit(self, envelope)
            return
        get = queue.get_nowait
        msgs = [msg]
        msgs += [get() for _ in range(waiting)]
        try:
            envelopes = decode_batch(bus, msgs, _data_of, self.topic)[0]
            if left := bus.pool.offer_many(self, envelopes):
                await bus.pool.submit_many(left)
        finally:
            # what nats-py's own loop does for each message it takes (it does it for ``msg``)
            sub._pending_size -= sum(map(len, map(_data_of, msgs))) - len(msg.data)
            done = queue.task_done
            for _ in range(waiting):
                done()

    async def _stop(self, deadline: float) -> None:
        if self._stopped or self.sub is None:
            return
        self._stopped = True
        task = getattr(self.sub, "_wait_for_msgs_task", None)
        nc = self.bus.nc
        problems: list[str] = []
        if nc is not None and not nc.is_closed:
            await self.bus.shutdown_call(self.sub.unsubscribe(), deadline, f"nats unsubscribe {self.topic!r}",
                                         problems)
        if await cancel_and_wait([task]):
            problems.append(f"nats-py's task for {self.topic!r} ignored cancellation")
        if problems:
            raise BusError("; ".join(problems))


class NatsBus(BaseBus):
    """Core NATS: at-most-once, subjects, queue groups for ``group``."""

    scheme = "nats"

    def __init__(self, servers: list[str], *, client_name: str = "busmon",
                 pending_size: int = 2 * 1024 * 1024, user: str | None = None, password: str | None = None,
                 token: str | None = None, credentials_file: str | None = None,
                 nkey_seed_file: str | None = None, ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, key_password: str | None = None, tls: bool | None = None,
                 **options: Any) -> None:
        super().__init__(**options)
        #: credentials and TLS for nats-py's connect (see bus.connection)
        self.security = NatsSecurity.from_options(
            user=user, password=password, token=token, credentials_file=credentials_file,
            nkey_seed_file=nkey_seed_file, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
            key_password=key_password, tls=tls)
        self.servers = servers
        self.client_name = client_name
        self.pending_size = pending_size
        self.nc: Client | None = None
        self._errors_seen: set[type] = set()
        self._connected = False  # nats-py's connect() returned once: its close() can be trusted
        self._connect_error: Exception | None = None

    def describe(self) -> str:
        return f"{self.scheme}://" + ",".join(s.split("://", 1)[-1] for s in self.servers)

    @property
    def uses_tls(self) -> bool:
        return self.security.context is not None

    def _first_address(self) -> tuple[str, int]:
        """The first server's host and port, as a refusal names them."""
        host, _, port = self.servers[0].split("://", 1)[-1].rpartition(":")
        return host.strip("[]"), int(port)

    async def _on_closed(self) -> None:
        """nats-py closed the connection by itself (reconnects are off): the broker is gone."""
        if self.state is State.STARTED:
            nc = self.nc
            last = getattr(nc, "last_error", None) if nc is not None else None
            why = f": {type(last).__name__}: {last}" if last is not None else ""
            self._fail(BusFault(f"{self.describe()}: connection lost{why}"))

    async def _on_error(self, exc: Exception) -> None:
        if self.state is State.STARTING:
            self._connect_error = exc  # start() raises a BusConnectError that says it
            return
        if type(exc) not in self._errors_seen:
            self._errors_seen.add(type(exc))
            log.warning("%s: %s: %s (logged once per kind)", self.describe(), type(exc).__name__, exc)

    async def _connect(self) -> None:
        self.nc = Client()
        try:
            await self._connect_client()
        except (nats.errors.Error, OSError) as exc:
            # nats-py raises the server's -ERR ('Authorization Violation') itself, and hands
            # a failed TLS handshake or refused connection to error_cb, then NoServersError
            reported = exc if not isinstance(exc, nats.errors.NoServersError) else self._connect_error
            host, port = self._first_address()
            refused = nats_refusal(reported, host, port, self.security)
            if refused is not None:
                raise refused from None
            if isinstance(exc, nats.errors.NoServersError):
                raise BusConnectError(f"{self.describe()}: {self._connect_error or 'no servers available'}") from None
            raise
        self._connected = True
        if self.security.context is not None and not _on_tls(self.nc):
            raise BusRefusedError(f"nats {address(*self._first_address())}: TLS was asked for, "
                                  "but the server does not offer it")

    async def _connect_client(self) -> None:
        assert self.nc is not None
        await self.nc.connect(
            servers=self.servers,
            name=self.client_name,
            connect_timeout=self.connect_timeout,
            allow_reconnect=False,
            # nats-py retries a refused server until max_reconnect_attempts is
            # exceeded (0 means forever): fail after one quick retry instead
            max_reconnect_attempts=1,
            reconnect_time_wait=0.05,
            pending_size=self.pending_size,
            error_cb=self._on_error,
            closed_cb=self._on_closed,
            **self.security.connect_kwargs(),
        )

    async def publish(self, topic: str, envelope: Envelope) -> None:
        """:meth:`BaseBus.publish` in one step for core NATS: stamped as it is framed, and
        straight to nats-py (the hot path: each layer saved shows against the raw client)."""
        if self.state is not _STARTED:
            self._check_started()
        await self.nc.publish(topic, self._framer.frame(envelope))  # type: ignore[union-attr]
        counters = self.counters
        counters.published += 1
        counters.bytes_out += len(envelope[2])

    async def _subscribe(self, topic: str, handler: Handler, group: str | None) -> NatsSubscription:
        assert self.nc is not None
        sub = NatsSubscription(self, topic, handler, group)
        sub.sub = await self.nc.subscribe(topic, queue=group or "", cb=sub._on_msg,
                                          pending_msgs_limit=1 << 20,
                                          pending_bytes_limit=256 * 1024 * 1024)
        task = getattr(sub.sub, "_wait_for_msgs_task", None)
        if task is not None:
            task.set_name(f"bus.nats.consumer:{topic}")
        await self.nc.flush(timeout=self.connect_timeout)  # the server has the SUB: live
        return sub

    async def _disconnect(self, deadline: float, problems: list[str]) -> None:
        nc = self.nc
        if nc is None:
            return
        try:
            if nc.is_connected:
                try:
                    await nc.flush(timeout=self.remaining(deadline))
                except (nats.errors.Error, asyncio.TimeoutError) as exc:
                    problems.append(f"flush at close: {type(exc).__name__}: {exc}".rstrip(": "))
        finally:
            await self._close_client(deadline, problems)

    async def _after_close(self, deadline: float) -> list[asyncio.Task]:
        # the safety net when close() did not reach _disconnect, or a connect failed half-way
        problems: list[str] = []
        refused = await self._close_client(deadline, problems)
        if problems:
            raise BusError("; ".join(problems))
        return refused

    async def _close_client(self, deadline: float, problems: list[str]) -> list[asyncio.Task]:
        """Close the connection (bounded) and await the tasks nats-py only cancels (idempotent);
        return those that refused to exit."""
        nc = self.nc
        if nc is None:
            return []
        tasks = client_tasks(nc)
        # never connected: nats-py's close() waits forever on a transport whose TLS upgrade failed
        # (StreamWriter.wait_closed), and there is nothing to flush
        if self._connected and not nc.is_closed:  # after a lost connection too: its own close may be half way
            await self.shutdown_call(nc.close(), deadline, "nats close()", problems)
        refused = await cancel_and_wait(tasks + client_tasks(nc))
        _drop_transport(nc)
        return refused


def _drop_transport(nc: Client) -> None:
    """Close the socket nats-py may have left open: its own close, started when the connection
    was lost, runs in its reading task and is cut short when that task is cancelled (after
    ``close()`` returned early because the status already said CLOSED), and a failed TLS
    upgrade leaves the plain transport behind."""
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is not None and not transport.is_closing():
        transport.abort()


def _safe_name(text: str) -> str:
    """Stream and consumer names may not contain '.', '*', '>' or spaces."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


class JetStreamSubscription(PollingSubscription):
    """A pull consumer and one named fetch loop (``bus.nats-js.consumer:<topic>``) feeding the
    pool; each message is acked after its handler ran."""

    task_prefix = "bus.nats-js.consumer"
    payload_of = _data_of
    settles = True  # each message is acked after its handler
    bus: JetStreamBus

    def __init__(self, bus: JetStreamBus, topic: str, handler: Handler, group: str | None,
                 psub: Any) -> None:
        self.psub = psub
        super().__init__(bus, topic, handler, group)

    async def _fetch(self) -> list[Any]:
        try:
            return await self.psub.fetch(self.bus.fetch_batch, timeout=self.bus.fetch_timeout)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            # nothing to fetch in time: nats-py raises its own TimeoutError, or asyncio's when
            # its wait for the pull's reply is what timed out (seen while a consumer sat idle
            # between subscribe and load in the dashboard)
            return []

    async def _reject(self, raw: Any) -> None:
        await raw.term()  # never redeliver garbage

    async def settle(self, token: Any, ok: bool) -> None:
        # ack even when the handler raised: the error is counted, and a nak
        # would redeliver a poison message forever
        try:
            await token.ack()
        except nats.errors.Error as exc:
            self.bus.counters.publish_errors += 1
            log.debug("ack failed: %s", exc)

    async def _close_intake(self) -> None:
        nc = self.bus.nc
        if nc is not None and not nc.is_closed:
            try:
                await self.psub.unsubscribe()
            except nats.errors.Error as exc:
                log.warning("nats-js: unsubscribe %s: %s", self.topic, exc)


class JetStreamBus(NatsBus):
    """JetStream: a stream per topic, a durable pull consumer per group, explicit acks."""

    scheme = "nats+js"

    def __init__(self, servers: list[str], *, max_pending_acks: int = 4000,
                 fetch_batch: int = 256, fetch_timeout: float = 0.5, ack_wait: float = 60.0,
                 storage: str = "file", publish_stall_timeout: float = 5.0, **options: Any) -> None:
        super().__init__(servers, **options)
        if storage not in ("file", "memory"):
            raise ValueError(f"storage must be 'file' or 'memory', got {storage!r}")
        if publish_stall_timeout <= 0:
            raise ValueError(f"publish_stall_timeout must be > 0, got {publish_stall_timeout}")
        self.max_pending_acks = max_pending_acks
        self.publish_stall_timeout = publish_stall_timeout
        self.fetch_batch = fetch_batch
        self.fetch_timeout = fetch_timeout
        self.ack_wait = ack_wait
        self.storage = js_api.StorageType.FILE if storage == "file" else js_api.StorageType.MEMORY
        self.js: Any = None
        self._streams: dict[str, str] = {}
        self._stream_lock = asyncio.Lock()
        self._confirmations = Confirmations(self.counters, log, "jetstream")

    async def _connect(self) -> None:
        await super()._connect()
        assert self.nc is not None
        self.js = self.nc.jetstream(publish_async_max_pending=self.max_pending_acks)
        await self.js.account_info()  # fails fast when the server has no JetStream

    async def ensure_stream(self, topic: str) -> str:
        """The stream that holds ``topic``, created (subjects=[topic]) if missing."""
        name = self._streams.get(topic)
        if name is not None:
            return name
        async with self._stream_lock:
            if topic in self._streams:
                return self._streams[topic]
            name = "BUSMON_" + _safe_name(topic)
            try:
                await self.js.stream_info(name)
            except nats.js.errors.NotFoundError:
                await self.js.add_stream(name=name, subjects=[topic], storage=self.storage)
            self._streams[topic] = name
            return name

    async def publish(self, topic: str, envelope: Envelope) -> None:
        """:meth:`BaseBus.publish` for JetStream: stamped as it is framed, into the topic's
        stream, its acknowledgement tracked."""
        if self.state is not _STARTED:
            self._check_started()
        data = self._framer.frame(envelope)
        if topic not in self._streams:
            await self.ensure_stream(topic)
        # at the pending-ack limit publish_async waits for acks: bounded, so a broker that stops
        # acknowledging is an error after publish_stall_timeout, not a hang (the bound costs a
        # timer, so it is only paid when the limit may be reached)
        stall = self.publish_stall_timeout if len(self._confirmations) >= self.max_pending_acks else None
        try:
            future = await self.js.publish_async(topic, data, wait_stall=stall)
        except nats.js.errors.TooManyStalledMsgsError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from None  # nats-py turns our cancellation into this
            raise BusError(f"{self.describe()}: publishing stalled: no acknowledgement for "
                           f"{self.publish_stall_timeout:g} s with {len(self._confirmations)} "
                           "pending") from None
        self._confirmations.add(future)
        counters = self.counters
        counters.published += 1
        counters.bytes_out += len(envelope[2])

    async def _subscribe(self, topic: str, handler: Handler, group: str | None) -> JetStreamSubscription:
        stream = await self.ensure_stream(topic)
        config = js_api.ConsumerConfig(
            deliver_policy=js_api.DeliverPolicy.NEW,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_ack_pending=max(self.fetch_batch * 4, 1024),
        )
        psub = await self.js.pull_subscribe(
            topic, durable=_safe_name(group) if group else None, stream=stream, config=config
        )
        return JetStreamSubscription(self, topic, handler, group, psub)

    async def _disconnect(self, deadline: float, problems: list[str]) -> None:
        drain_deadline = min(deadline, self._closing_at + self.drain_timeout)
        if unconfirmed := await self._confirmations.wait(drain_deadline - asyncio.get_running_loop().time()):
            problems.append(f"{unconfirmed} publishes unconfirmed at close")
        await super()._disconnect(deadline, problems)
