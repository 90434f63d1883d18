"""Dead letters: the jobs that used up their attempts or failed for good, to find, redrive or purge.

``app.dead_letters(queue, error_type=..., since=..., until=..., text=...)`` is a :class:`DeadLetters`
over the dead letters matching that filter (see :class:`~conveyor.ports.DeadLetterFilter`). Acting
on a filter works through it newest first, :data:`BATCH` at a time, so a redrive of 100,000 dead
letters neither holds them in memory nor one long transaction; dead letters that arrive meanwhile
are newer than where it started and are left alone.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from typing import Any

import orjson

from conveyor.model.envelope import Envelope
from conveyor.model.history import HistoryKind
from conveyor.ports import Backend, Commit, DeadLetter, DeadLetterFilter, Effects, HistoryEntry
from conveyor.runtime.clock import Clock

BATCH = 1000
"""Dead letters redriven or purged per backend call when acting on a filter."""

Progress = Callable[[int], None]
"""Called after each batch with how many were acted on so far."""


class DeadLetters:
    """The dead letters matching one filter: ``await`` it for the oldest 100, or act on them.

    >>> # entries = await app.dead_letters("process_payment")
    >>> # await app.dead_letters("process_payment", error_type="PaymentDeclined").redrive()
    """

    def __init__(
        self, backend: Backend, clock: Clock, where: DeadLetterFilter, *, history: bool = True
    ) -> None:
        self._backend = backend
        self._clock = clock
        self.where = where
        self._history = history

    @property
    def queue(self) -> str | None:
        return self.where.queue

    @property
    def _queue_only(self) -> bool:
        where = self.where
        return where.error_type is None and where.since is None and where.until is None and where.text is None

    def __await__(self) -> Generator[Any, None, list[DeadLetter]]:
        return self.list().__await__()

    async def list(self, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Oldest first, by offset (kept for scripts that page this way; :meth:`page` pages
        newest first by key, which stays fast however deep it goes)."""
        if self._queue_only:
            return await self._backend.dead_letters(self.queue, limit, offset)
        found = [d async for d in self.iterate()]
        found.reverse()
        return found[offset : offset + limit]

    async def page(
        self, limit: int = 100, before: DeadLetter | tuple[float, str] | None = None
    ) -> builtins.list[DeadLetter]:
        """Newest first; the next page is ``page(limit, before=<the last one of this page>)``."""
        if isinstance(before, DeadLetter):
            before = (before.failed_at, before.id)
        return await self._backend.find_dead_letters(self.where, limit, before)

    async def iterate(self, batch: int = BATCH) -> AsyncIterator[DeadLetter]:
        """Every matching dead letter, newest first, fetched ``batch`` at a time."""
        before: tuple[float, str] | None = None
        while True:
            found = await self._backend.find_dead_letters(self.where, batch, before)
            for dead in found:
                yield dead
            if len(found) < batch:
                return
            before = (found[-1].failed_at, found[-1].id)

    async def count(self) -> int:
        return await self._backend.count_dead_letters(self.where)

    async def get(self, dead_id: str) -> DeadLetter | None:
        """One dead letter with its body and traceback (whether or not it matches the filter)."""
        return await self._backend.dead_letter(dead_id)

    async def redrive(
        self,
        ids: Sequence[str] | None = None,
        *,
        delay: float | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Put dead jobs back on their queues with fresh attempts, ``delay`` seconds from now (at
        once by default): the given ``ids``, or every one matching the filter. Returns the count.
        A dead letter whose id a live job holds (the same event delivered again) stays put.

        Each job's workflow instance records it as enqueued again, so its status follows the
        redriven job rather than the dead letter's outcome (failed, compensated)."""
        now = self._clock.now()
        at = None if delay is None else now + max(0.0, delay)
        backend = self._backend
        if ids is None:
            return await self._each_found(lambda found: self._redrive(found, now, at), progress)
        if not self._history:
            return await backend.redrive(list(ids), now, at)
        found = [dead for dead_id in ids if (dead := await backend.dead_letter(dead_id)) is not None]
        return await self._redrive(found, now, at)

    async def _redrive(self, found: builtins.list[DeadLetter], now: float, at: float | None) -> int:
        count = await self._backend.redrive([d.id for d in found], now, at)
        if count and self._history:
            effects = Effects()
            detail = orjson.dumps({"redriven": True} | ({} if at is None else {"available_at": at})).decode()
            for dead in found:
                try:
                    correlation_id = Envelope.decode(dead.body).correlation_id
                except Exception:  # an undecodable job belongs to no instance
                    continue
                effects.history.append(
                    HistoryEntry(correlation_id, now, HistoryKind.ENQUEUED, dead.queue, dead.id, None, detail)
                )
            if effects.history:
                await self._backend.commit([Commit(effects=effects)], now)
        return count

    async def purge(self, ids: Sequence[str] | None = None, *, progress: Progress | None = None) -> int:
        """Delete dead jobs for good: the given ``ids``, or every one matching the filter."""
        backend = self._backend
        if ids is not None:
            return await backend.purge(list(ids), None)
        if self._queue_only:  # one statement, however many
            return await backend.purge(None, self.queue)
        return await self._each_batch(lambda batch: backend.purge(batch, None), progress)

    async def _each_batch(
        self, act: Callable[[builtins.list[str]], Awaitable[int]], progress: Progress | None
    ) -> int:
        return await self._each_found(lambda found: act([d.id for d in found]), progress)

    async def _each_found(
        self, act: Callable[[builtins.list[DeadLetter]], Awaitable[int]], progress: Progress | None
    ) -> int:
        done = 0
        before: tuple[float, str] | None = None
        while True:
            found = await self._backend.find_dead_letters(self.where, BATCH, before)
            if not found:
                return done
            done += await act(found)
            if progress is not None:
                progress(done)
            if len(found) < BATCH:
                return done
            before = (found[-1].failed_at, found[-1].id)
