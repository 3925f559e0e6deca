"""Which partition a key's records go to, worked out once per key rather than per record.

aiokafka places a keyed record with its default partitioner: murmur2 of the key, in
pure Python, on every ``send`` (about a microsecond of the ~8 µs a record costs the process).
A key's partition only changes when the topic's partitions do, so the bus works it out
once, with the same partitioner over the same partition list aiokafka would use, and
passes it to ``send``. Every metadata update (new partitions, a new leader) forgets all
of it; the next record of each key is placed afresh by aiokafka itself.
"""

from __future__ import annotations

from typing import Any

from aiokafka.partitioner import DefaultPartitioner

#: keys remembered per topic; past this the topic's memo starts over (an unbounded key space
#: must not grow memory)
MAX_KEYS = 100_000


class Placement:
    """key → (key bytes, partition), per topic, for one producer whose partitioner it holds."""

    def __init__(self) -> None:
        #: given to the producer as its partitioner, so both place keys alike
        self.partitioner = DefaultPartitioner()
        #: topic → key → (the key encoded, its partition); read directly on the publish path
        self.topics: dict[str, dict[str, tuple[bytes, int]]] = {}

    def learn(self, topic: str, key: str, key_bytes: bytes, cluster: Any) -> None:
        """Remember where ``key`` goes in ``topic``, once aiokafka has the topic's metadata
        (after a ``send`` of it has returned)."""
        partitions = cluster.partitions_for_topic(topic)
        if not partitions:
            return
        placed = self.topics.get(topic)
        if placed is None or len(placed) >= MAX_KEYS:
            placed = self.topics[topic] = {}
        # what aiokafka's send() passes its partitioner: every partition, whether or not it
        # has a leader now (for a key, the default partitioner looks at no other)
        all_partitions = list(partitions)
        placed[key] = (key_bytes, self.partitioner(key_bytes, all_partitions, all_partitions))

    def forget(self, _cluster: Any = None) -> None:
        """The cluster's metadata changed: place every key afresh (a metadata listener)."""
        self.topics.clear()
