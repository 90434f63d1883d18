"""Wake-ups for ``wait_for_jobs``: Redis pub/sub, one channel per queue.

Scripts that make jobs due (``commit.lua``, ``redrive.lua``) publish on
``<prefix>:{<queue>}:notify``, with the committing backend instance's tag as the message: an
instance ignores its own (its commits wake its waiters directly, or need not wake them when the
lease riding on the commit took every due job). One background task reads the subscription and
marks the queue *pending*; a waiter returns as soon as one of its queues is pending. ``lease``
clears the pending mark of the queues it leases from *before* it reads them, so a notification
can never fall between a lease that found nothing and the wait that follows it: at worst the
wait returns at once and the next lease is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

logger = logging.getLogger("conveyor.backends.redis")

_READ_TIMEOUT = 1.0
_MAX_BACKOFF = 1.0


class _Closable(Protocol):
    """``PubSub.aclose`` as typed here: redis-py types it from 8.2 on and left it untyped before,
    so neither a call nor a ``type: ignore`` would be clean on both sides."""

    async def aclose(self) -> None: ...


class Notifier:
    """Pending queues and the tasks waiting for them."""

    def __init__(self, client: Redis, channel: Callable[[str], str], sender: str) -> None:
        self._client = client
        self._channel = channel
        self._own = sender.encode()
        self._queue_of: dict[bytes, str] = {}
        self._pending: set[str] = set()
        self._waiters: dict[asyncio.Future[None], frozenset[str]] = {}
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = False

    def consume(self, queues: Iterable[str]) -> None:
        """Forget the pending marks of ``queues``: the caller is about to lease from them."""
        self._pending.difference_update(queues)

    def signal(self, queues: Iterable[str]) -> None:
        """Mark ``queues`` pending and wake the tasks waiting for any of them."""
        queues = set(queues)
        if not queues:
            return
        self._pending |= queues
        for waiter, wanted in self._waiters.items():
            if not waiter.done() and not wanted.isdisjoint(queues):
                waiter.set_result(None)

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Return when one of ``queues`` is pending, or after ``timeout`` seconds."""
        wanted = frozenset(queues)
        if not wanted.isdisjoint(self._pending):
            return
        unheard = [q for q in wanted if self._channel(q).encode() not in self._queue_of]
        if unheard:
            try:
                await self._subscribe(unheard)
            except (RedisError, OSError):
                # Redis is away: wait out the timeout; the caller's next lease reports the error
                await asyncio.sleep(timeout)
            # a commit may have come before the subscription: return so the caller leases again
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[waiter] = wanted
        try:
            await asyncio.wait([waiter], timeout=timeout)
        finally:
            del self._waiters[waiter]
            waiter.cancel()

    async def close(self) -> None:
        """Stop reading and close the subscription's connection."""
        self._closing = True
        if self._reader is not None:
            self._reader.cancel()
            # Bounded: a cancellation that races a read timeout can be lost inside the driver;
            # the reader then sees `_closing` at its next turn (within a read timeout).
            await asyncio.wait([self._reader], timeout=_READ_TIMEOUT * 3)
            self._reader = None
        if self._pubsub is not None:
            pubsub: _Closable = self._pubsub
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
            self._pubsub = None
        for waiter in self._waiters:
            waiter.cancel()

    async def _subscribe(self, queues: Sequence[str]) -> None:
        if self._pubsub is None:
            self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        channels = {self._channel(queue).encode(): queue for queue in queues}
        await self._pubsub.subscribe(*channels)
        self._queue_of.update(channels)
        if self._reader is None:
            self._reader = asyncio.create_task(self._read(self._pubsub), name="conveyor-redis-notify")

    async def _read(self, pubsub: PubSub) -> None:
        backoff = 0.0
        while not self._closing:
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_READ_TIMEOUT)
            except Exception as exc:  # the listener must outlive anything: waiters fall back to polling
                if not backoff:
                    logger.warning("Redis wake-up listener lost its connection: %s", exc)
                backoff = min(_MAX_BACKOFF, backoff * 2 or 0.05)
                await asyncio.sleep(backoff)
                continue
            if backoff:
                # back after an outage: whatever was published meanwhile is lost, so wake everyone
                backoff = 0.0
                self.signal(self._queue_of.values())
            if message is not None and message["type"] == "message" and message["data"] != self._own:
                queue = self._queue_of.get(message["channel"])
                if queue is not None:
                    self.signal((queue,))
