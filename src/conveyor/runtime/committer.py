"""Group commit: settlements submitted while a commit is in flight share the next round trip."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Protocol

from conveyor.model.errors import BackendError, BackendUnavailableError
from conveyor.ports import Backend, Commit, CommitAndLease, CommitResult, LeasedJob
from conveyor.runtime.clock import Clock

logger = logging.getLogger("conveyor.worker")


class Refill(Protocol):
    """The worker's side of leasing with a commit (see :class:`~conveyor.ports.CommitAndLease`)."""

    @property
    def lease_map(self) -> Mapping[str, float]:
        """Queue name → lease seconds."""
        ...

    def reserve(self, settling: int) -> int:
        """Claim the slots free once ``settling`` jobs are settled; returns how many (maybe 0)."""
        ...

    def leased(self, jobs: list[LeasedJob], reserved: int) -> None:
        """Start ``jobs`` and give back the ``reserved`` slots they were leased for."""
        ...


class Committer:
    """Batches commits from many concurrent jobs into few backend calls.

    A failed round trip is retried while the backend is unreachable: that is safe because every
    settlement is fenced by its lease token (a commit that did apply comes back ``STALE``, applying
    nothing twice).
    """

    def __init__(
        self, backend: Backend, clock: Clock, *, max_batch: int = 500, refill: Refill | None = None
    ) -> None:
        self._backend = backend
        self._refill = refill if isinstance(backend, CommitAndLease) else None
        self._clock = clock
        self._max_batch = max_batch
        self._pending: list[tuple[Commit, asyncio.Future[CommitResult]]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self.retry_for = 60.0

    async def submit(self, commit: Commit) -> CommitResult:
        future: asyncio.Future[CommitResult] = asyncio.get_running_loop().create_future()
        self._pending.append((commit, future))
        self._wake.set()
        return await future

    async def run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                results = await self._commit([commit for commit, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else BackendError(str(exc)))
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _commit(self, commits: list[Commit]) -> list[CommitResult]:
        delay, waited = 0.05, 0.0
        while True:
            try:
                return await self._commit_once(commits)
            except BackendUnavailableError as exc:
                if waited >= self.retry_for:
                    raise
                logger.warning("commit failed, retrying in %.2fs: %s", delay, exc)
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 2.0)

    async def _commit_once(self, commits: list[Commit]) -> list[CommitResult]:
        refill = self._refill
        reserved = refill.reserve(len(commits)) if refill is not None else 0
        if not reserved:
            return await self._backend.commit(commits, self._clock.now())
        assert refill is not None and isinstance(self._backend, CommitAndLease)
        jobs: list[LeasedJob] = []
        try:
            results, jobs = await self._backend.commit_and_lease(
                commits, self._clock.now(), refill.lease_map, reserved
            )
        finally:
            refill.leased(jobs, reserved)  # before the settled jobs' slots free up
        return results

    async def close(self) -> None:
        """Let every pending commit go through, then stop."""
        self._closing = True
        self._wake.set()
