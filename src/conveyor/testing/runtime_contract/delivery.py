"""The runtime contract's delivery, effects and leases: a job runs, its effects commit with its ack,
and a lease fences off a worker that lost it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from conveyor import App, Context, Lifecycle, Service
from conveyor.testing import FakeClock, running, wait_until
from conveyor.testing.runtime_contract.fixtures import (
    NO_JITTER,
    AppFixtures,
    Item,
    Recorder,
    _polled,
    _stats,
    _status_with_steps,
)


class DeliveryContract(AppFixtures):
    """Delivery, effects, leases and fencing (part of ``RuntimeContract``)."""

    async def test_job_runs_once_and_is_acknowledged(self, make_app: Callable[..., App]) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("work", payload=Item)
        async def work(ctx: Context, job: Item) -> None:
            rec.calls.append(("work", job.n, ctx.job.attempt))

        app = make_app(svc)
        async with running(app):
            job_id = await app.enqueue("work", {"n": 1})
            await wait_until(lambda: rec.seen("work"))
            await wait_until(lambda: _stats(app, "work", lambda s: s.ready + s.leased == 0))
        assert rec.calls == [("work", 1, 1)]
        assert isinstance(job_id, str) and job_id

    async def test_effects_commit_with_the_ack(self, make_app: Callable[..., App]) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("first", payload=Item, emits=["first_done"], enqueues=["second"])
        async def first(ctx: Context, job: Item) -> None:
            await ctx.emit("first_done", {"n": job.n})
            await ctx.enqueue("second", {"n": job.n + 1})
            await ctx.states.set("first", {"n": job.n})

        @svc.subscription("first_done")
        async def on_first_done(ctx: Context, event: Item) -> None:
            rec.calls.append(("on_first_done", event.n, 0))

        @svc.queue_worker("second", payload=Item)
        async def second(ctx: Context, job: Item) -> None:
            rec.calls.append(("second", job.n, 0))

        app = make_app(svc)
        async with running(app):
            await app.enqueue("first", {"n": 1})
            await wait_until(lambda: rec.seen("second") and rec.seen("on_first_done"))
            assert await app.states.get("first") == {"n": 1}
        assert rec.seen("on_first_done") == [1] and rec.seen("second") == [2]

    async def test_failed_attempt_leaves_no_effects(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker(
            "flaky",
            payload=Item,
            emits=["done"],
            enqueues=["after"],
            lifecycle=Lifecycle(max_attempts=3, retry=NO_JITTER),
        )
        async def flaky(ctx: Context, job: Item) -> None:
            await ctx.emit("done", {"n": ctx.job.attempt})
            await ctx.enqueue("after", {"n": ctx.job.attempt})
            await ctx.states.set("attempt", ctx.job.attempt)
            rec.calls.append(("flaky", job.n, ctx.job.attempt))
            if ctx.job.attempt == 1:
                raise RuntimeError("first attempt fails after buffering effects")

        @svc.subscription("done")
        async def on_done(ctx: Context, event: Item) -> None:
            rec.calls.append(("on_done", event.n, 0))

        @svc.queue_worker("after", payload=Item)
        async def after(ctx: Context, job: Item) -> None:
            rec.calls.append(("after", job.n, 0))

        app = make_app(svc)
        async with running(app):
            await app.enqueue("flaky", {"n": 0})
            await wait_until(lambda: rec.attempts("flaky") == [1])
            await wait_until(lambda: _stats(app, "flaky", lambda s: s.scheduled == 1))
            clock.advance(10)
            await wait_until(lambda: rec.seen("on_done") and rec.seen("after"))
            assert await app.states.get("attempt") == 2
        assert rec.seen("on_done") == [2] and rec.seen("after") == [2]

    async def test_correlation_id_is_inherited_by_everything_a_handler_produces(
        self, make_app: Callable[..., App]
    ) -> None:
        svc, seen = Service("svc"), []

        @svc.queue_worker("start", emits=["started"])
        async def start(ctx: Context, job: dict[str, Any]) -> None:
            await ctx.emit("started", {})

        @svc.subscription("started")
        async def on_started(ctx: Context, event: dict[str, Any]) -> None:
            assert ctx.message is not None
            seen.append((ctx.correlation_id, ctx.message.causation_id))

        app = make_app(svc)
        async with running(app):
            job_id = await app.enqueue("start", {}, correlation_id="order-42")
            await wait_until(lambda: seen)
            status = await wait_until(lambda: _status_with_steps(app, "order-42", 2))
        assert seen == [("order-42", job_id)]  # causation: the job whose handler emitted
        assert status.path == ["start", "(started)", "on_started"]

    # leases and fencing

    async def test_job_of_a_dead_worker_runs_again_after_its_lease_expires(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("work", payload=Item, lifecycle=Lifecycle(visibility_timeout=30))
        async def work(ctx: Context, job: Item) -> None:
            rec.calls.append(("work", job.n, ctx.job.attempt))

        app = make_app(svc)
        async with app:
            await app.enqueue("work", {"n": 7})
            # a worker that leased the job and died: nobody settles this lease
            [dead] = await app.backend.lease({"work": 30.0}, 1, clock.now())
            assert dead.attempt == 1
        async with running(app):
            clock.advance(29)
            await _polled(app)
            assert rec.calls == []
            clock.advance(2)
            await wait_until(lambda: rec.calls)
        assert rec.calls == [("work", 7, 2)]

    async def test_worker_whose_lease_expired_cannot_commit(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        # The watch cancels the handler once its lease deadline passes; this one ignores the
        # cancellation and finishes late, after the job was leased again: nothing of it commits.
        svc, rec = Service("svc"), Recorder()
        gate, cancelled, finished_late = asyncio.Event(), asyncio.Event(), asyncio.Event()

        @svc.queue_worker(
            "slow", payload=Item, emits=["slow_done"], lifecycle=Lifecycle(visibility_timeout=30)
        )
        async def slow(ctx: Context, job: Item) -> None:
            rec.calls.append(("slow", job.n, ctx.job.attempt))
            await ctx.emit("slow_done", {"n": ctx.job.attempt})
            if ctx.job.attempt == 1:
                try:
                    await gate.wait()
                except asyncio.CancelledError:
                    cancelled.set()
                    await gate.wait()
                finished_late.set()

        @svc.subscription("slow_done")
        async def on_done(ctx: Context, event: Item) -> None:
            rec.calls.append(("on_done", event.n, 0))

        app = make_app(svc)
        async with running(app):
            await app.enqueue("slow", {"n": 1})
            await wait_until(lambda: rec.attempts("slow") == [1])
            clock.advance(31)  # the first attempt's lease expires; the job is leased again
            await wait_until(lambda: rec.attempts("slow") == [1, 2])
            await wait_until(lambda: rec.seen("on_done") == [2])
            assert cancelled.is_set()
            gate.set()  # the first attempt finishes late: its result must be discarded
            await finished_late.wait()
            await wait_until(lambda: app._workers[0].processed == 2)  # attempt 2 + on_done
            await _polled(app)
            assert rec.seen("on_done") == [2] and app._workers[0].processed == 2

    async def test_extend_lease_keeps_the_job(self, make_app: Callable[..., App], clock: FakeClock) -> None:
        svc, rec = Service("svc"), Recorder()
        extended, gate = asyncio.Event(), asyncio.Event()

        @svc.queue_worker("long", payload=Item, lifecycle=Lifecycle(visibility_timeout=30))
        async def long(ctx: Context, job: Item) -> None:
            rec.calls.append(("long", job.n, ctx.job.attempt))
            await ctx.extend_lease(300)
            extended.set()
            await gate.wait()

        app = make_app(svc)
        async with running(app):
            await app.enqueue("long", {"n": 1})
            await extended.wait()
            clock.advance(100)
            assert await app.backend.lease({"long": 30.0}, 1, clock.now()) == []
            gate.set()
            await wait_until(lambda: _stats(app, "long", lambda s: s.ready + s.leased + s.scheduled == 0))
        assert rec.attempts("long") == [1]

    async def test_heartbeat_keeps_the_lease_of_a_long_job(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc, rec = Service("svc"), Recorder()
        started, gate = asyncio.Event(), asyncio.Event()

        @svc.queue_worker("crunch", lifecycle=Lifecycle(visibility_timeout=30, heartbeat=True))
        async def crunch(ctx: Context, job: dict[str, Any]) -> None:
            rec.calls.append(("crunch", None, ctx.job.attempt))
            started.set()
            await gate.wait()

        app = make_app(svc)
        async with running(app):
            await app.enqueue("crunch", {})
            await started.wait()
            worker = app._workers[0]
            for beat in range(1, 7):  # 120 s in all, four leases' worth
                clock.advance(20)
                await wait_until(lambda: worker.lease_extensions >= beat)  # noqa: B023
                assert await app.backend.lease({"crunch": 30.0}, 1, clock.now()) == []
            gate.set()
            await wait_until(lambda: _stats(app, "crunch", lambda s: s.ready + s.leased + s.scheduled == 0))
        assert rec.attempts("crunch") == [1]

    async def test_delay_and_run_at_hold_a_job_until_due(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("later", payload=Item)
        async def later(ctx: Context, job: Item) -> None:
            rec.calls.append(("later", job.n, 0))

        app = make_app(svc)
        async with running(app):
            await app.enqueue("later", {"n": 1}, delay=60)
            await app.enqueue("later", {"n": 2}, run_at=clock.now() + 120)
            await _polled(app)
            assert rec.calls == []
            clock.advance(60)
            await wait_until(lambda: rec.seen("later") == [1])
            # the first job's ack must land before the clock passes its lease
            await wait_until(lambda: _stats(app, "later", lambda s: s.leased == 0 and s.scheduled == 1))
            clock.advance(60)
            await wait_until(lambda: rec.seen("later") == [1, 2])
