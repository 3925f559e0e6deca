"""The in-process backend: topics and groups in memory, no broker."""

from __future__ import annotations

import asyncio

from busmon.bus.base import BaseBus, BaseSubscription
from busmon.bus.envelope import Envelope
from busmon.bus.pool import key_hash

#: publishes in a row before one yields to the loop (see ``_publish``)
PUBLISH_BURST = 512
from busmon.bus.protocol import Handler


class MemorySubscription(BaseSubscription):
    async def _stop(self, deadline: float) -> None:
        self.bus._remove(self)


class MemoryBus(BaseBus):
    """Fan-out to groups; within a group a key always goes to the same member.

    Choosing the member by key (like a Kafka partition) keeps per-key order
    within a group that has several members.
    """

    scheme = "memory"

    def __init__(self, **options) -> None:
        super().__init__(**options)
        # topic -> group id -> members; an ungrouped subscription is its own group
        self._topics: dict[str, dict[object, list[MemorySubscription]]] = {}
        # topic -> one tuple of members per group, rebuilt on (un)subscribe: the hot path reads it
        self._routes: dict[str, tuple[tuple[MemorySubscription, ...], ...]] = {}
        self._unyielded = 0  # publishes since one last yielded to the loop

    def _publish_nowait(self, topic: str, envelope: Envelope) -> bool:
        routes = self._routes.get(topic)
        if routes is None:
            return True  # nobody listens: nothing to do
        self._unyielded += 1
        if len(routes) == 1 and len(routes[0]) == 1 and self._unyielded < PUBLISH_BURST:  # the common case
            return self.pool.offer(routes[0][0], envelope)
        return False

    async def _publish(self, topic: str, envelope: Envelope) -> None:
        pool = self.pool
        if self._unyielded >= PUBLISH_BURST:
            # handlers that finish at once run inside publish (the pool's eager dispatch): a
            # publisher looping flat out would never suspend, and the loop would starve
            self._unyielded = 0
            await asyncio.sleep(0)
        routes = self._routes.get(topic)
        if routes is None:
            return
        for members in routes:
            target = members[0] if len(members) == 1 else members[key_hash(envelope.key) % len(members)]
            if not pool.offer(target, envelope):
                await pool.submit(target, envelope)

    def _reroute(self, topic: str) -> None:
        groups = self._topics.get(topic)
        if groups:
            self._routes[topic] = tuple(tuple(m) for m in groups.values())
        else:
            self._routes.pop(topic, None)
            self._topics.pop(topic, None)

    async def _subscribe(self, topic: str, handler: Handler, group: str | None) -> MemorySubscription:
        sub = MemorySubscription(self, topic, handler, group)
        group_id: object = group if group is not None else sub
        self._topics.setdefault(topic, {}).setdefault(group_id, []).append(sub)
        self._reroute(topic)
        return sub

    def _remove(self, sub: MemorySubscription) -> None:
        groups = self._topics.get(sub.topic, {})
        group_id: object = sub.group if sub.group is not None else sub
        members = groups.get(group_id, [])
        if sub in members:
            members.remove(sub)
        if not members:
            groups.pop(group_id, None)
        self._reroute(sub.topic)
