"""The worker's watch task and registry heartbeat, on their own: what they cost and how they fail."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import pytest

from conveyor import App, Context, Lifecycle, Service, WorkerConfig
from conveyor.backends.memory import MemoryBackend
from conveyor.model.errors import BackendUnavailableError
from conveyor.ports import LeasedJob, WorkerInfo
from conveyor.runtime.registry import new_worker_id
from conveyor.runtime.watch import Running, Watch
from conveyor.testing import FakeClock, running, wait_until


class CountingBackend(MemoryBackend):
    """A memory backend that counts its cancel_requests calls, and can fail heartbeats or extends."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[int] = []
        self.failing_beats = 0
        self.extend_fails = False

    async def cancel_requests(self, job_ids: Sequence[str]) -> list[str]:
        self.asked.append(len(job_ids))
        return await super().cancel_requests(job_ids)

    async def register_worker(self, worker: WorkerInfo) -> None:
        if self.failing_beats:
            self.failing_beats -= 1
            raise BackendUnavailableError("connection refused")
        await super().register_worker(worker)

    async def extend(self, job_id: str, token: int, until: float, now: float) -> bool:
        return False if self.extend_fails else await super().extend(job_id, token, until, now)


async def _turns() -> None:
    """A few turns of the event loop: what was woken has run to its next wait."""
    for _ in range(10):
        await asyncio.sleep(0)


def _leased(n: int, deadline: float) -> LeasedJob:
    return LeasedJob(f"job-{n}", "q", b"", 1, n, deadline, 0.0)


def test_a_worker_id_is_host_pid_and_six_hex() -> None:
    first, second = new_worker_id("web-1", 42), new_worker_id("web-1", 42)
    assert first.startswith("web-1:42:") and len(first.rsplit(":", 1)[1]) == 6 and first != second


async def test_a_cancellation_wait_returns_once_requested_or_at_once_after() -> None:
    running_job = Running(asyncio.ensure_future(asyncio.sleep(0)), _leased(1, 100.0))
    waiter = asyncio.ensure_future(running_job.cancellation())
    await asyncio.sleep(0)
    assert not waiter.done() and not running_job.cancel_requested
    running_job.request_cancel()
    await asyncio.wait_for(waiter, 1)
    assert running_job.cancel_requested
    await asyncio.wait_for(running_job.cancellation(), 1)  # requested already: at once
    await running_job.task


async def test_the_watch_asks_nothing_while_no_job_runs_and_once_an_interval_for_all() -> None:
    backend, clock = CountingBackend(), FakeClock()
    watch = Watch(backend, clock, interval=1.0)
    task = asyncio.create_task(watch.run())
    try:
        for _ in range(5):
            clock.advance(10)
            await asyncio.sleep(0)
        assert backend.asked == []
        gate = asyncio.Event()
        jobs = [asyncio.create_task(gate.wait()) for _ in range(100)]
        for n, job in enumerate(jobs):
            watch.start(job, _leased(n, clock.now() + 1_000))
        await _turns()
        for polls in (1, 2):  # an early wake-up of the fake clock makes no call of its own
            clock.advance(0.5)
            await _turns()
            assert len(backend.asked) == polls - 1
            clock.advance(0.5)
            await wait_until(lambda n=polls: watch.polls == n)  # type: ignore[misc]
        assert backend.asked == [100, 100]
        gate.set()
        await asyncio.wait(jobs)
    finally:
        task.cancel()
        await asyncio.wait({task})


async def test_a_failed_heartbeat_is_logged_and_beaten_again(caplog: pytest.LogCaptureFixture) -> None:
    backend, clock = CountingBackend(), FakeClock()
    backend.failing_beats = 1
    app = App([Service("svc")], backend=backend, clock=clock, worker=WorkerConfig(heartbeat_interval=5))
    async with running(app):
        await wait_until(lambda: any("heartbeat failed" in r.getMessage() for r in caplog.records))
        assert await app.workers() == []
        clock.advance(5)
        await wait_until(app.workers)
    assert any(r.levelno == logging.WARNING and "heartbeat failed" in r.getMessage() for r in caplog.records)


async def test_a_heartbeat_that_finds_its_lease_taken_cancels_the_handler_at_once() -> None:
    backend, clock = CountingBackend(), FakeClock()
    svc, attempts, cancelled = Service("svc"), [], asyncio.Event()

    @svc.queue_worker("beating", lifecycle=Lifecycle(visibility_timeout=30, heartbeat=True))
    async def beating(ctx: Context, job: dict[str, Any]) -> None:
        attempts.append(ctx.job.attempt)
        if len(attempts) == 1:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

    app = App([svc], backend=backend, clock=clock, worker=WorkerConfig(poll_interval=0.01))
    async with running(app):
        await app.enqueue("beating", {})
        await wait_until(lambda: attempts == [1])
        backend.extend_fails = True
        clock.advance(10)  # the heartbeat's extend, well before the deadline, finds the lease taken
        await cancelled.wait()
        backend.extend_fails = False
        clock.advance(21)  # its lease ends: the job is leased again
        await wait_until(lambda: attempts == [1, 2])
