"""What many test modules share: the fixed start time, long leases, jobs to enqueue and a backend
connected for a block. Fixtures live in ``conftest.py``; this module holds plain names to import."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

from conveyor.ports import Backend, Commit, Effects, NewJob

T0 = 1_700_000_000.0
"""The fake clock's start in the backend tests: a fixed instant, so due times are exact."""
LEASE = {"q": 300.0}  # far longer than any test: every lease stays valid

B = TypeVar("B", bound=Backend)


def new_jobs(count: int, queue: str = "q") -> list[NewJob]:
    """``count`` jobs on ``queue``, due at ``T0``, with ids that sort in their order."""
    return [NewJob(f"job-{i:05d}", queue, b'{"n": %d}' % i, T0, T0) for i in range(count)]


def enqueue(*jobs: NewJob) -> list[Commit]:
    """The commit batch that enqueues ``jobs`` in one commit."""
    return [Commit(effects=Effects(jobs=list(jobs)))]


@contextlib.asynccontextmanager
async def connected(backend: B) -> AsyncIterator[B]:
    """``backend`` connected for the block, closed after it (also when the block fails)."""
    await backend.connect()
    try:
        yield backend
    finally:
        await backend.close()
