"""The worker keeps serving through backend hiccups and odd handler behaviour."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from conveyor import App, Context, Lifecycle, Service, WorkerConfig
from conveyor.backends.memory import MemoryBackend
from conveyor.model.errors import BackendUnavailableError
from conveyor.ports import LeasedJob
from conveyor.testing import FakeClock, running, wait_until


class FlakyBackend(MemoryBackend):
    """A memory backend whose next leases fail, as a lost connection or a driver bug would."""

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[Exception] = []

    async def lease(
        self, queues: Mapping[str, float], limit: int, now: float, worker: str = ""
    ) -> list[LeasedJob]:
        if self.failures:
            raise self.failures.pop(0)
        return await super().lease(queues, limit, now, worker)


async def test_worker_survives_failing_leases() -> None:
    svc, done = Service("svc"), []

    @svc.queue_worker("work")
    async def work(ctx: Context, job: dict[str, Any]) -> None:
        done.append(job["n"])

    backend = FlakyBackend()
    app = App([svc], backend=backend, worker=WorkerConfig(poll_interval=0.01))
    async with running(app):
        backend.failures += [BackendUnavailableError("connection refused"), RuntimeError("driver bug")]
        await app.enqueue("work", {"n": 1})
        await wait_until(lambda: done == [1], timeout=5)
    assert backend.failures == []


async def test_handler_cancelling_itself_runs_again_after_its_lease() -> None:
    svc, attempts = Service("svc"), []
    clock = FakeClock()

    @svc.queue_worker("odd", lifecycle=Lifecycle(visibility_timeout=30))
    async def odd(ctx: Context, job: dict[str, Any]) -> None:
        attempts.append(ctx.job.attempt)
        if len(attempts) == 1:
            raise asyncio.CancelledError()

    app = App([svc], backend="memory://", clock=clock, worker=WorkerConfig(poll_interval=0.01))
    async with running(app):
        await app.enqueue("odd", {})
        await wait_until(lambda: attempts == [1])
        clock.advance(31)
        await wait_until(lambda: attempts == [1, 2])
