"""Dead letters: the jobs that used up their attempts or failed for good, to list, redrive or purge."""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

from conveyor.ports import Backend, DeadLetter
from conveyor.runtime.clock import Clock


class DeadLetters:
    """The dead-letter queue of one queue (or of all): ``await`` it for a list, or act on it.

    >>> # entries = await app.dead_letters("process_payment")
    >>> # await app.dead_letters("process_payment").redrive()
    """

    def __init__(self, backend: Backend, clock: Clock, queue: str | None) -> None:
        self._backend = backend
        self._clock = clock
        self.queue = queue

    def __await__(self) -> Generator[Any, None, list[DeadLetter]]:
        return self.list().__await__()

    async def list(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        return await self._backend.dead_letters(self.queue, limit, offset)

    async def redrive(self, ids: Sequence[str] | None = None) -> int:
        """Put dead jobs back on their queues with fresh attempts (all of this queue's by default)."""
        if ids is None:
            ids = [d.id for d in await self.list(limit=1_000_000)]
        return await self._backend.redrive(list(ids), self._clock.now())

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        """Delete dead jobs for good (all of this queue's by default)."""
        if ids is None and self.queue is None:
            return await self._backend.purge(None, None)
        return await self._backend.purge(None if ids is None else list(ids), self.queue)
