"""The runtime contract's retries and dead letters: the retry strategy, permanent errors, timeouts,
the dead-letter hook, redrive and purge."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import App, Context, Lifecycle, PermanentError, RetryStrategy, Service
from conveyor.testing import FakeClock, running, wait_until
from conveyor.testing.runtime_contract.fixtures import (
    NO_JITTER,
    AppFixtures,
    Item,
    Recorder,
    _at_least,
    _polled,
    _stats,
)


class RetriesContract(AppFixtures):
    """Retries and dead letters (part of ``RuntimeContract``)."""

    async def test_retries_follow_the_strategy_then_dead_letter_with_details(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("fails", payload=Item, lifecycle=Lifecycle(max_attempts=3, retry=NO_JITTER))
        async def fails(ctx: Context, job: Item) -> None:
            rec.calls.append(("fails", clock.now(), ctx.job.attempt))
            raise ValueError(f"broken {job.n}")

        app = make_app(svc)
        start = clock.now()
        async with running(app):
            await app.enqueue("fails", {"n": 5})
            await wait_until(lambda: rec.attempts("fails") == [1])
            clock.advance(9.9)
            await _polled(app)
            assert rec.attempts("fails") == [1]
            clock.advance(0.1)  # 10 s after attempt 1 (initial_delay)
            await wait_until(lambda: rec.attempts("fails") == [1, 2])
            clock.advance(19.9)
            await _polled(app)
            assert rec.attempts("fails") == [1, 2]
            clock.advance(0.1)  # 20 s after attempt 2 (x multiplier)
            await wait_until(lambda: rec.attempts("fails") == [1, 2, 3])
            dead = await wait_until(lambda: app.dead_letters("fails").list())
        assert [t - start for t in rec.seen("fails")] == pytest.approx([0, 10, 30])
        [entry] = dead
        assert entry.attempts == 3 and entry.queue == "fails"
        assert entry.error.type == "ValueError" and entry.error.message == "broken 5"
        assert entry.error.traceback and "ValueError: broken 5" in entry.error.traceback
        assert entry.failed_at == pytest.approx(start + 30) and entry.enqueued_at == pytest.approx(start)

    async def test_retry_jitter_stays_within_bounds_and_varies(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        strategy = RetryStrategy(initial_delay=100, max_delay=1000, multiplier=2, jitter=0.2)
        samples = [strategy.delay(2, random.Random(seed)) for seed in range(200)]
        assert all(160 <= s <= 240 for s in samples) and len({round(s, 6) for s in samples}) > 100
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("jittery", lifecycle=Lifecycle(max_attempts=2, retry=strategy))
        async def jittery(ctx: Context, job: dict[str, Any]) -> None:
            rec.calls.append(("jittery", clock.now(), 0))
            raise RuntimeError("again")

        app = make_app(svc)
        async with running(app):
            await app.enqueue("jittery", {})
            await wait_until(lambda: len(rec.calls) == 1)
            # the retry must be committed before the clock passes the first attempt's lease
            await wait_until(lambda: _stats(app, "jittery", lambda s: s.scheduled == 1))
            clock.advance(79.9)
            await _polled(app)
            assert len(rec.calls) == 1
            clock.advance(40.2)
            await wait_until(lambda: len(rec.calls) == 2)

    async def test_permanent_error_dead_letters_without_retry(self, make_app: Callable[..., App]) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("refuses", lifecycle=Lifecycle(max_attempts=5))
        async def refuses(ctx: Context, job: dict[str, Any]) -> None:
            rec.calls.append(("refuses", None, ctx.job.attempt))
            raise PermanentError("card declined")

        app = make_app(svc)
        async with running(app):
            await app.enqueue("refuses", {})
            [entry] = await wait_until(lambda: app.dead_letters("refuses").list())
        assert rec.attempts("refuses") == [1]
        assert entry.error.type.endswith("PermanentError") and entry.error.message == "card declined"

    async def test_on_dead_letter_effects_commit_with_the_move(self, make_app: Callable[..., App]) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("charge", payload=Item, lifecycle=Lifecycle(max_attempts=1))
        async def charge(ctx: Context, job: Item) -> None:
            raise RuntimeError("gateway down")

        @charge.on_dead_letter(emits=["charge_failed"])
        async def compensate(ctx: Context, job: Item, error: BaseException) -> None:
            rec.calls.append(("hook", (job.n, str(error)), 0))
            await ctx.emit("charge_failed", {"n": job.n})

        @svc.subscription("charge_failed")
        async def refund(ctx: Context, event: Item) -> None:
            rec.calls.append(("refund", event.n, 0))

        app = make_app(svc)
        async with running(app):
            await app.enqueue("charge", {"n": 3}, correlation_id="order-3")
            await wait_until(lambda: rec.seen("refund"))
            assert len(await app.dead_letters("charge")) == 1
            status = await app.workflows.status("order-3")
        assert rec.seen("hook") == [(3, "gateway down")] and rec.seen("refund") == [3]
        assert status.compensations == ["charge"] and "charge_failed" in status.events

    async def test_dead_letters_can_be_listed_redriven_and_purged(self, make_app: Callable[..., App]) -> None:
        svc, rec = Service("svc"), Recorder()
        healed = asyncio.Event()

        @svc.queue_worker("fragile", payload=Item, lifecycle=Lifecycle(max_attempts=1))
        async def fragile(ctx: Context, job: Item) -> None:
            rec.calls.append(("fragile", job.n, ctx.job.attempt))
            if not healed.is_set():
                raise RuntimeError("not yet")

        app = make_app(svc)
        async with running(app):
            for n in (1, 2):
                await app.enqueue("fragile", {"n": n})
            dead = await wait_until(lambda: _at_least(app.dead_letters("fragile").list(), 2))
            healed.set()
            first, _ = sorted(dead, key=lambda d: d.body)
            assert await app.dead_letters("fragile").redrive([first.id]) == 1
            await wait_until(lambda: len(rec.calls) == 3)
            assert await app.dead_letters("fragile").purge() == 1
            assert await app.dead_letters("fragile") == []
        assert rec.calls[-1][2] == 1  # a redriven job starts over at attempt 1

    async def test_job_whose_workers_keep_dying_is_dead_lettered_without_running(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("poison", lifecycle=Lifecycle(max_attempts=2, visibility_timeout=10))
        async def poison(ctx: Context, job: dict[str, Any]) -> None:
            rec.calls.append(("poison", None, 0))

        app = make_app(svc)
        async with app:
            await app.enqueue("poison", {})
            for _ in range(2):  # two workers took it and died
                assert await app.backend.lease({"poison": 10.0}, 1, clock.now())
                clock.advance(11)
        async with running(app):
            [entry] = await wait_until(lambda: app.dead_letters("poison").list())
        assert rec.calls == [] and entry.attempts == 3 and "max_attempts" in entry.error.message

    async def test_timeout_is_a_retryable_failure(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("hangs", lifecycle=Lifecycle(timeout=0.05, max_attempts=2, retry=NO_JITTER))
        async def hangs(ctx: Context, job: dict[str, Any]) -> None:
            rec.calls.append(("hangs", None, ctx.job.attempt))
            await asyncio.Event().wait()

        app = make_app(svc)
        async with running(app):
            await app.enqueue("hangs", {})
            await wait_until(lambda: _stats(app, "hangs", lambda s: s.scheduled == 1))
            clock.advance(10)
            [entry] = await wait_until(lambda: app.dead_letters("hangs").list())
        assert rec.attempts("hangs") == [1, 2] and entry.error.type.endswith("HandlerTimeoutError")
