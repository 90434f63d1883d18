"""The runtime contract's operator calls through the app: pause and resume honoured by a serving
worker, queue metrics, job lookup and cancel, dead letters found, redriven and purged by filter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from conveyor import App, Context, Lifecycle, PermanentError, Service, UnknownQueueError
from conveyor.operations.jobs import CancelOutcome
from conveyor.ports import JobState
from conveyor.testing import FakeClock, running, wait_until
from conveyor.testing.runtime_contract.fixtures import AppFixtures, Item, Recorder, _polled


def _service(rec: Recorder) -> Service:
    svc = Service("svc")

    @svc.queue_worker("work", payload=Item, lifecycle=Lifecycle(max_attempts=1))
    async def work(ctx: Context, job: Item) -> None:
        rec.calls.append(("work", job.n, 0))
        if job.n < 0:
            raise PermanentError(f"negative {job.n}")
        if job.n >= 100:
            raise KeyError(f"item {job.n} is missing")

    @svc.queue_worker("other", payload=Item)
    async def other(ctx: Context, job: Item) -> None:
        rec.calls.append(("other", job.n, 0))

    return svc


class OperatingContract(AppFixtures):
    """The operator's API on a serving app (part of ``RuntimeContract``)."""

    async def test_a_paused_queue_runs_nothing_until_resumed(self, make_app: Callable[..., App]) -> None:
        rec = Recorder()
        app = make_app(_service(rec))
        async with running(app):
            assert await app.queues.pause("work") is True
            await app.enqueue("work", {"n": 1})
            await app.enqueue("other", {"n": 2})
            await wait_until(lambda: rec.seen("other") == [2])
            await _polled(app)
            assert rec.seen("work") == []
            [metrics] = await app.queues.metrics(["work"])
            assert metrics.paused and metrics.ready == 1 and metrics.paused_at is not None
            health = await app.health()
            assert "work" in health.paused_queues and health.queues["work"]["paused"] is True
            assert await app.queues.resume("work") is True
            await wait_until(lambda: rec.seen("work") == [1])
            assert await app.queues.paused() == {}

    async def test_pausing_an_unknown_queue_is_refused(self, make_app: Callable[..., App]) -> None:
        app = make_app(_service(Recorder()))
        async with app:
            with pytest.raises(UnknownQueueError, match="did you mean 'work'"):
                await app.queues.pause("wrok")

    async def test_metrics_count_what_settled_per_minute(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        rec = Recorder()
        app = make_app(_service(rec))
        async with running(app):
            await app.enqueue_many("work", [{"n": n} for n in (1, 2, 3, -1)])
            await wait_until(lambda: len(rec.seen("work")) == 4)
            await wait_until(lambda: app.dead_letters("work").count())
            clock.advance(60)
            [metrics] = await app.queues.metrics(["work"], window=120)
        assert (metrics.completed_per_minute, metrics.dead_per_minute, metrics.retried_per_minute) == (
            1.5,
            0.5,
            0.0,
        )
        assert (metrics.ready, metrics.in_flight, metrics.dead, metrics.declared) == (0, 0, 1, True)
        async with app:
            [counts] = await app.queues.throughput(["work"], since=clock.now() - 120)
        assert (counts.completed, counts.dead) == (3, 1)

    async def test_a_job_is_looked_up_in_every_state(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        rec = Recorder()
        app = make_app(_service(rec))
        async with app:
            later = await app.enqueue("work", {"n": 1}, delay=30, idempotency_key="order-1", priority=2)
            view = await app.jobs.get(later)
            by_key = await app.jobs.by_key("work", "order-1")
        assert view is not None and (view.state, view.queue, view.payload, view.priority) == (
            JobState.SCHEDULED,
            "work",
            {"n": 1},
            2,
        )
        assert view.correlation_id == later and [e.kind for e in view.history] == ["enqueued"]
        assert by_key is not None and by_key.id == later
        async with running(app):
            clock.advance(30)
            await wait_until(lambda: rec.seen("work") == [1])
            done = await wait_until(lambda: _in_state(app, later, JobState.DONE))
            assert done.attempts == 1 and done.history[-1].kind == "succeeded"
            dead_id = await app.enqueue("work", {"n": 100})
            dead = await wait_until(lambda: _in_state(app, dead_id, JobState.DEAD))
            assert await app.jobs.get("no-such-job") is None
        assert dead.last_error is not None and dead.last_error.type == "KeyError"

    async def test_a_waiting_job_is_cancelled_and_a_running_one_asked_to_stop(
        self, make_app: Callable[..., App]
    ) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("slow", payload=Item)
        async def slow(ctx: Context, job: Item) -> None:
            rec.calls.append(("slow", job.n, 0))
            await rec.release.wait()

        app = make_app(svc)
        async with app:
            waiting = await app.enqueue("slow", {"n": 1}, delay=60, idempotency_key="k")
            assert await app.jobs.cancel(waiting, by="alice") is CancelOutcome.CANCELLED
            assert await app.jobs.cancel(waiting) is CancelOutcome.FINISHED
            assert await app.jobs.cancel("no-such-job") is CancelOutcome.NOT_FOUND
            view = await app.jobs.get(waiting)
            assert view is not None and view.state is JobState.CANCELLED
            assert '"alice"' in (view.history[-1].detail or "")
            again = await app.enqueue("slow", {"n": 2}, idempotency_key="k")  # the key was freed
            assert again != waiting
            async with running(app):
                await wait_until(lambda: rec.seen("slow") == [2])
                assert await app.jobs.cancel(again) is CancelOutcome.REQUESTED
                view = await app.jobs.get(again)
                assert view is not None and view.state is JobState.RUNNING and view.cancel_requested
                rec.release.set()

    async def test_dead_letters_are_found_and_acted_on_by_filter(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        rec = Recorder()
        app = make_app(_service(rec))
        async with running(app):
            await app.enqueue_many("work", [{"n": n} for n in (-1, -2, 100, 101, 102)])
            await wait_until(lambda: _count(app, 5))
        async with app:
            start = clock.now()
            missing = app.dead_letters("work", error_type="KeyError", text="ITEM 10")
            assert await missing.count() == 3
            page = await missing.page(limit=2)
            assert len(page) == 2 and all(d.error.type == "KeyError" for d in page)
            rest = await missing.page(limit=2, before=page[-1])
            assert len(rest) == 1 and rest[0].id not in {d.id for d in page}
            one = await missing.get(page[0].id)
            assert one is not None and one.error.traceback and "KeyError" in one.error.traceback
            assert await app.dead_letters("work", since=start + 1).count() == 0
            assert await app.dead_letters(error_type="PermanentError").count() == 2
            progress: list[int] = []
            assert await missing.redrive(delay=30, progress=progress.append) == 3
            assert progress == [3] and await missing.count() == 0
            [stats] = await app.stats(["work"])
            assert (stats.scheduled, stats.dead) == (3, 2)
            assert await app.dead_letters("work", text="negative").purge() == 2
            assert await app.dead_letters().count() == 0


async def _in_state(app: App, job_id: str, state: JobState) -> Any:
    view = await app.jobs.get(job_id)
    return view if view is not None and view.state is state else None


async def _count(app: App, count: int) -> bool:
    return await app.dead_letters().count() >= count
