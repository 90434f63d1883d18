"""What every store contract test shares: a backend fixture and builders of jobs, commits and
settlements at a fixed time."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from conveyor.backends import open_backend
from conveyor.ports import Backend, Commit, Effects, ErrorInfo, NewJob, Outcome, Settlement

T0 = 1_700_000_000.0


def job(job_id: str, queue: str = "q", *, at: float = T0, key: str | None = None) -> NewJob:
    return NewJob(job_id, queue, b'{"n": "%s"}' % job_id.encode(), at, at, key)


def enqueue(*jobs: NewJob) -> Commit:
    return Commit(effects=Effects(jobs=list(jobs)))


def settle(leased_id: str, token: int, outcome: Outcome, **kwargs: object) -> Settlement:
    return Settlement(leased_id, token, outcome, **kwargs)  # type: ignore[arg-type]


ERR = ErrorInfo("ValueError", "boom", "Traceback ...")


class StoreFixtures:
    """The ``backend`` fixture (connected to ``backend_url``, closed after the test) and ``durable``."""

    durable = False
    """Set True for backends whose data survive closing and reopening the same URL."""

    @pytest.fixture
    async def backend(self, backend_url: str) -> AsyncIterator[Backend]:
        store = open_backend(backend_url)
        await store.connect()
        try:
            yield store
        finally:
            await store.close()
