"""The in-process backend: topics and groups in memory, no broker."""

from __future__ import annotations

import zlib

from bus.base import BaseBus, BaseSubscription
from bus.envelope import Envelope
from bus.protocol import Handler


class MemorySubscription(BaseSubscription):
    async def _stop(self) -> None:
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

    async def _publish(self, topic: str, envelope: Envelope) -> None:
        groups = self._topics.get(topic)
        if not groups:
            return
        submit = self.pool.submit
        for members in list(groups.values()):
            if len(members) == 1:
                await submit(members[0], envelope)
            else:
                await submit(members[zlib.crc32(envelope.key.encode()) % len(members)], envelope)

    async def _subscribe(self, topic: str, handler: Handler, group: str | None) -> MemorySubscription:
        sub = MemorySubscription(self, topic, handler, group)
        group_id: object = group if group is not None else sub
        self._topics.setdefault(topic, {}).setdefault(group_id, []).append(sub)
        return sub

    def _remove(self, sub: MemorySubscription) -> None:
        groups = self._topics.get(sub.topic, {})
        group_id: object = sub.group if sub.group is not None else sub
        members = groups.get(group_id, [])
        if sub in members:
            members.remove(sub)
        if not members:
            groups.pop(group_id, None)
