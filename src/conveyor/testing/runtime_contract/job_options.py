"""The runtime contract's enqueue options and dead-letter event: a job's own priority, attempts and
lease, and the event a queue announces its dead letters with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from conveyor import App, ConfigurationError, Context, Lifecycle, Service, WorkerConfig
from conveyor.testing import FakeClock, running, wait_until
from conveyor.testing.runtime_contract.fixtures import NO_JITTER, AppFixtures, Item, Recorder


class JobOptionsContract(AppFixtures):
    """Enqueue options and the dead-letter event (part of ``RuntimeContract``)."""

    async def test_higher_priority_jobs_run_first(self, make_app: Callable[..., App]) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("work", payload=Item)
        async def work(ctx: Context, job: Item) -> None:
            rec.calls.append(("work", job.n, 0))

        app = make_app(svc, worker=WorkerConfig(concurrency=1, poll_interval=0.05, shutdown_grace=5))
        async with app:
            await app.enqueue_many("work", [{"n": n} for n in range(3)])
            await app.enqueue("work", {"n": 10}, priority=5)
            await app.enqueue("work", {"n": -1}, priority=-3)
            await app.enqueue_many("work", [{"n": 20}, {"n": 21}], priority=9)
            async with running(app):
                await wait_until(lambda: len(rec.seen("work")) == 7)
        # by priority; jobs of one priority enqueued at the same instant may come in any order
        seen = rec.seen("work")
        assert [set(seen[:2]), seen[2], set(seen[3:6]), seen[6]] == [{20, 21}, 10, {0, 1, 2}, -1]

    async def test_priority_out_of_range_is_refused_before_anything_is_stored(
        self, make_app: Callable[..., App]
    ) -> None:
        svc = Service("svc")

        @svc.queue_worker("work", payload=Item)
        async def work(ctx: Context, job: Item) -> None: ...

        app = make_app(svc)
        async with app:
            with pytest.raises(ConfigurationError, match="priority must be an int from -10 to 10"):
                await app.enqueue("work", {"n": 1}, priority=11)
            with pytest.raises(ConfigurationError, match="max_attempts"):
                await app.enqueue("work", {"n": 1}, max_attempts=0)
            with pytest.raises(ConfigurationError, match="visibility_timeout"):
                await app.enqueue("work", {"n": 1}, visibility_timeout=-1)
            [stats] = await app.stats(["work"])
            assert stats.ready == 0

    async def test_a_jobs_own_max_attempts_replaces_its_queues(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("fails", payload=Item, lifecycle=Lifecycle(max_attempts=5, retry=NO_JITTER))
        async def fails(ctx: Context, job: Item) -> None:
            rec.calls.append(("fails", job.n, ctx.job.max_attempts))
            raise ValueError("no")

        app = make_app(svc)
        async with running(app):
            await app.enqueue("fails", {"n": 1}, max_attempts=2)
            await wait_until(lambda: len(rec.calls) == 1)
            clock.advance(10)
            [dead] = await wait_until(lambda: app.dead_letters("fails").list())
        assert dead.attempts == 2 and rec.calls == [("fails", 1, 2), ("fails", 1, 2)]

    async def test_a_jobs_own_visibility_timeout_sets_its_lease(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("slow", payload=Item, lifecycle=Lifecycle(visibility_timeout=30))
        async def slow(ctx: Context, job: Item) -> None:
            rec.calls.append(("slow", job.n, 0))
            await rec.release.wait()

        app = make_app(svc)
        async with running(app):
            start = clock.now()
            job_id = await app.enqueue("slow", {"n": 1}, visibility_timeout=600)
            await wait_until(lambda: rec.seen("slow") == [1])
            [lease] = await app.backend.leases("slow")
            assert lease.job_id == job_id and lease.expires_at == pytest.approx(start + 600)
            rec.release.set()
            await wait_until(lambda: _no_leases(app, "slow"))

    async def test_a_queues_dead_letter_event_is_emitted_with_the_dead_letter(
        self, make_app: Callable[..., App]
    ) -> None:
        svc, seen = Service("svc"), []

        @svc.queue_worker(
            "charge", payload=Item, lifecycle=Lifecycle(max_attempts=1), dead_letter_event="charge_failed"
        )
        async def charge(ctx: Context, job: Item) -> None:
            raise ValueError(f"card {job.n} declined")

        @svc.subscription("charge_failed")
        async def alert(ctx: Context, event: dict[str, Any]) -> None:
            seen.append((event, ctx.correlation_id))

        app = make_app(svc)
        async with running(app):
            job_id = await app.enqueue("charge", {"n": 7}, correlation_id="order-7")
            await wait_until(lambda: len(seen) == 1)
        [(event, correlation_id)] = seen
        assert correlation_id == "order-7"
        assert event == {
            "job_id": job_id,
            "queue": "charge",
            "attempts": 1,
            "error": {"type": "ValueError", "message": "card 7 declined"},
            "payload": {"n": 7},
        }

    def test_a_dead_letter_event_must_be_a_valid_name(self) -> None:
        svc = Service("svc")
        with pytest.raises(ConfigurationError):

            @svc.queue_worker("q", dead_letter_event="not valid!")
            async def q(ctx: Context, job: Any) -> None: ...


async def _no_leases(app: App, queue: str) -> bool:
    return await app.backend.leases(queue) == []
