"""The NATS backends (nats-py): core subjects with queue groups, and JetStream.

nats-py cancels its own tasks on close without awaiting them; this backend
awaits them, so that when ``close()`` returns nothing it started is alive.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api as js_api

from bus.base import BaseBus, BaseSubscription, State
from bus.confirmations import Confirmations
from bus.codec import encode
from bus.envelope import Envelope
from bus.errors import BusConnectError
from bus.polling import PollingSubscription, decode_or_count
from bus.protocol import Handler
from bus.tasks import cancel_and_wait

log = logging.getLogger("bus.nats")


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


class NatsSubscription(BaseSubscription):
    """A core NATS subscription whose callback feeds the keyed pool."""

    bus: NatsBus

    def __init__(self, bus: NatsBus, topic: str, handler: Handler, group: str | None) -> None:
        super().__init__(bus, topic, handler, group)
        self.sub: Any = None
        self._stopped = False

    async def _on_msg(self, msg: Msg) -> None:
        envelope = decode_or_count(self.bus, msg.data, self.topic)
        if envelope is not None and not self.bus.pool.offer(self, envelope):
            await self.bus.pool.submit(self, envelope)

    async def _stop(self) -> None:
        if self._stopped or self.sub is None:
            return
        self._stopped = True
        task = getattr(self.sub, "_wait_for_msgs_task", None)
        nc = self.bus.nc
        if nc is not None and not nc.is_closed:
            try:
                await self.sub.unsubscribe()
            except nats.errors.Error as exc:
                log.warning("nats: unsubscribe %s: %s", self.topic, exc)
        await cancel_and_wait([task])


class NatsBus(BaseBus):
    """Core NATS: at-most-once, subjects, queue groups for ``group``."""

    scheme = "nats"

    def __init__(self, servers: list[str], *, client_name: str = "busmon",
                 pending_size: int = 2 * 1024 * 1024, **options: Any) -> None:
        super().__init__(**options)
        self.servers = servers
        self.client_name = client_name
        self.pending_size = pending_size
        self.nc: Client | None = None
        self._errors_seen: set[type] = set()
        self._connect_error: Exception | None = None

    def describe(self) -> str:
        return f"{self.scheme}://" + ",".join(s.split("://", 1)[-1] for s in self.servers)

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
        except nats.errors.NoServersError:
            reason = self._connect_error or "no servers available"
            raise BusConnectError(f"{self.describe()}: {reason}") from None

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
        )

    async def _publish(self, topic: str, envelope: Envelope) -> None:
        assert self.nc is not None
        await self.nc.publish(topic, encode(envelope))

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

    async def _disconnect(self, timeout: float) -> None:
        nc = self.nc
        if nc is None:
            return
        try:
            if nc.is_connected:
                try:
                    await nc.flush(timeout=max(0.1, timeout))
                except (nats.errors.Error, asyncio.TimeoutError) as exc:
                    log.warning("%s: flush at close: %s", self.describe(), exc)
        finally:
            await self._close_client()

    async def _after_close(self) -> None:
        # the safety net when close() did not reach _disconnect, or a connect failed half-way
        await self._close_client()

    async def _close_client(self) -> None:
        """Close the connection and await the tasks nats-py only cancels (idempotent)."""
        nc = self.nc
        if nc is None:
            return
        tasks = client_tasks(nc)
        if not nc.is_closed:
            try:
                await nc.close()
            except Exception as exc:  # e.g. the connection never came up
                log.debug("%s: close: %s", self.describe(), exc)
        await cancel_and_wait(tasks + client_tasks(nc))


def _safe_name(text: str) -> str:
    """Stream and consumer names may not contain '.', '*', '>' or spaces."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


class JetStreamSubscription(PollingSubscription):
    """A pull consumer and one named fetch loop (``bus.nats-js.consumer:<topic>``) feeding the
    pool; each message is acked after its handler ran."""

    task_prefix = "bus.nats-js.consumer"
    bus: JetStreamBus

    def __init__(self, bus: JetStreamBus, topic: str, handler: Handler, group: str | None,
                 psub: Any) -> None:
        self.psub = psub
        super().__init__(bus, topic, handler, group)

    async def _fetch(self) -> list[Any]:
        try:
            return await self.psub.fetch(self.bus.fetch_batch, timeout=self.bus.fetch_timeout)
        except nats.errors.TimeoutError:
            return []

    def _payload(self, raw: Any) -> bytes:
        return raw.data

    def _token(self, raw: Any) -> Any:
        return raw

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
                 storage: str = "file", **options: Any) -> None:
        super().__init__(servers, **options)
        if storage not in ("file", "memory"):
            raise ValueError(f"storage must be 'file' or 'memory', got {storage!r}")
        self.max_pending_acks = max_pending_acks
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

    async def _publish(self, topic: str, envelope: Envelope) -> None:
        if topic not in self._streams:
            await self.ensure_stream(topic)
        self._confirmations.add(await self.js.publish_async(topic, encode(envelope)))

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

    async def _disconnect(self, timeout: float) -> None:
        await self._confirmations.wait(timeout)
        await super()._disconnect(timeout)
