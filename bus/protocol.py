"""The adapter interface every bus implements (DESIGN §10).

Structural protocols, so a user's own bus needs no base class from busmon.
"""

from __future__ import annotations

from typing import Awaitable, Callable, Protocol, runtime_checkable

from busmon.bus.envelope import Envelope

Handler = Callable[[Envelope], Awaitable[None]]


@runtime_checkable
class Subscription(Protocol):
    async def unsubscribe(self) -> None: ...


@runtime_checkable
class EventBus(Protocol):
    async def start(self) -> None: ...

    async def publish(self, topic: str, envelope: Envelope) -> None: ...

    async def subscribe(
        self, topic: str, handler: Handler, *, group: str | None = None
    ) -> Subscription: ...

    async def close(self) -> None: ...
