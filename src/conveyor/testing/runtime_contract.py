"""The runtime contract: every guarantee of DESIGN.md §3, through the public API, on one backend.

Subclass :class:`RuntimeContract` and provide a ``backend_url`` fixture (an empty, isolated backend,
as for :class:`~conveyor.testing.store_contract.StoreContract`). Time is a :class:`FakeClock`: leases,
delays, retries and schedules are tested without waiting for them.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import BaseModel

from conveyor import App, Context, Lifecycle, PermanentError, RetryStrategy, Service, WorkerConfig
from conveyor.backends import open_backend
from conveyor.model.errors import PayloadTooLargeError, PayloadValidationError, UndeclaredEmitError
from conveyor.ports import Backend, Commit, CommitAndLease, Effects, NewJob
from conveyor.testing import FakeClock, running, wait_until

NO_JITTER = RetryStrategy(initial_delay=10, max_delay=100, multiplier=2, jitter=0)


class Item(BaseModel):
    n: int


class Recorder:
    """What handlers saw, for assertions."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, int]] = []
        self.release = asyncio.Event()

    def seen(self, queue: str) -> list[Any]:
        return [payload for name, payload, _ in self.calls if name == queue]

    def attempts(self, queue: str) -> list[int]:
        return [attempt for name, _, attempt in self.calls if name == queue]


class AppFixtures:
    """The fixtures every runtime-level contract uses: a fake clock, backends, apps on them."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    async def backends(self, backend_url: str) -> AsyncIterator[Callable[[], Backend]]:
        """New backend objects on the same store (the same object for ``memory://``)."""
        opened: list[Backend] = []
        shared = open_backend(backend_url) if backend_url.startswith("memory") else None

        def make() -> Backend:
            if shared is not None:
                return shared
            backend = open_backend(backend_url)
            opened.append(backend)
            return backend

        yield make

    @pytest.fixture
    def make_app(self, backends: Callable[[], Backend], clock: FakeClock) -> Callable[..., App]:
        def make(*services: Service, **kwargs: Any) -> App:
            kwargs.setdefault("worker", WorkerConfig(concurrency=8, poll_interval=0.05, shutdown_grace=5))
            return App(list(services), backend=backends(), clock=clock, **kwargs)

        return make


class RuntimeContract(AppFixtures):
    """Every backend passes these unchanged."""

    # delivery and effects

    async def test_job_runs_once_and_is_acknowledged(self, make_app: Callable[..., App]) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("work", payload=Item)
        async def work(ctx: Context, job: Item) -> None:
            rec.calls.append(("work", job.n, ctx.job.attempt if ctx.job else 0))

        app = make_app(svc)
        async with running(app):
            job_id = await app.enqueue("work", {"n": 1})
            await wait_until(lambda: rec.seen("work"))
            await wait_until(lambda: _stats(app, "work", lambda s: s.ready + s.leased == 0))
        assert rec.calls == [("work", 1, 1)]
        assert isinstance(job_id, str) and job_id

    async def test_effects_commit_with_the_ack(self, make_app: Callable[..., App]) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("first", payload=Item, emits=["first_done"])
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
            lifecycle=Lifecycle(max_attempts=3, retry=NO_JITTER),
        )
        async def flaky(ctx: Context, job: Item) -> None:
            assert ctx.job is not None
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
            rec.calls.append(("work", job.n, ctx.job.attempt if ctx.job else 0))

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
        svc, rec = Service("svc"), Recorder()
        gate = asyncio.Event()

        @svc.queue_worker(
            "slow", payload=Item, emits=["slow_done"], lifecycle=Lifecycle(visibility_timeout=30)
        )
        async def slow(ctx: Context, job: Item) -> None:
            assert ctx.job is not None
            rec.calls.append(("slow", job.n, ctx.job.attempt))
            await ctx.emit("slow_done", {"n": ctx.job.attempt})
            if ctx.job.attempt == 1:
                await gate.wait()

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
            gate.set()  # the first attempt finishes late: its commit must be rejected
            await wait_until(lambda: app._workers[0].processed == 3)  # 2 attempts + on_done
        assert rec.seen("on_done") == [2]

    async def test_extend_lease_keeps_the_job(self, make_app: Callable[..., App], clock: FakeClock) -> None:
        svc, rec = Service("svc"), Recorder()
        extended, gate = asyncio.Event(), asyncio.Event()

        @svc.queue_worker("long", payload=Item, lifecycle=Lifecycle(visibility_timeout=30))
        async def long(ctx: Context, job: Item) -> None:
            rec.calls.append(("long", job.n, ctx.job.attempt if ctx.job else 0))
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
            rec.calls.append(("crunch", None, ctx.job.attempt if ctx.job else 0))
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

    # retries and dead letters

    async def test_retries_follow_the_strategy_then_dead_letter_with_details(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("fails", payload=Item, lifecycle=Lifecycle(max_attempts=3, retry=NO_JITTER))
        async def fails(ctx: Context, job: Item) -> None:
            rec.calls.append(("fails", clock.now(), ctx.job.attempt if ctx.job else 0))
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
            rec.calls.append(("refuses", None, ctx.job.attempt if ctx.job else 0))
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
            rec.calls.append(("fragile", job.n, ctx.job.attempt if ctx.job else 0))
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
            rec.calls.append(("hangs", None, ctx.job.attempt if ctx.job else 0))
            await asyncio.Event().wait()

        app = make_app(svc)
        async with running(app):
            await app.enqueue("hangs", {})
            await wait_until(lambda: _stats(app, "hangs", lambda s: s.scheduled == 1))
            clock.advance(10)
            [entry] = await wait_until(lambda: app.dead_letters("hangs").list())
        assert rec.attempts("hangs") == [1, 2] and entry.error.type.endswith("HandlerTimeoutError")

    # idempotency, fan-out, subscriptions, state

    async def test_idempotent_enqueue_returns_the_first_jobs_id(self, make_app: Callable[..., App]) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("once", payload=Item)
        async def once(ctx: Context, job: Item) -> None:
            rec.calls.append(("once", job.n, 0))

        app = make_app(svc)
        async with app:
            first = await app.enqueue("once", {"n": 1}, idempotency_key="order-42")
            second = await app.enqueue("once", {"n": 2}, idempotency_key="order-42")
            assert first == second
        async with running(app):
            await wait_until(lambda: rec.calls)
            await wait_until(lambda: _stats(app, "once", lambda s: s.ready + s.leased == 0))
            third = await app.enqueue("once", {"n": 3}, idempotency_key="order-42")
        assert third == first and rec.seen("once") == [1]

    async def test_event_fans_out_to_every_matching_subscription(self, make_app: Callable[..., App]) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.subscription("order_placed")
        async def reserve(ctx: Context, event: Item) -> None:
            rec.calls.append(("reserve", event.n, 0))

        @svc.subscription("order_placed")
        async def audit(ctx: Context, event: Item) -> None:
            rec.calls.append(("audit", event.n, 0))

        @svc.subscription("other_event")
        async def unrelated(ctx: Context, event: Item) -> None:
            rec.calls.append(("unrelated", event.n, 0))

        app = make_app(svc)
        async with running(app):
            await app.emit("order_placed", {"n": 1})
            await wait_until(lambda: rec.seen("reserve") and rec.seen("audit"))
        assert rec.seen("reserve") == [1] and rec.seen("audit") == [1] and rec.seen("unrelated") == []

    async def test_events_emitted_while_the_subscriber_is_down_wait_for_it(
        self, make_app: Callable[..., App]
    ) -> None:
        subscriber, producer, rec = Service("subscriber"), Service("producer"), Recorder()

        @subscriber.subscription("invoice_created")
        async def mail_invoice(ctx: Context, event: Item) -> None:
            rec.calls.append(("mail_invoice", event.n, 0))

        subscriber_app = make_app(subscriber)
        async with subscriber_app:  # registers the subscription durably, then goes away
            pass
        producer_app = make_app(producer)
        async with producer_app:
            await producer_app.emit("invoice_created", {"n": 9})
        async with running(subscriber_app):
            await wait_until(lambda: rec.calls)
        assert rec.seen("mail_invoice") == [9]

    async def test_state_compare_and_set(self, make_app: Callable[..., App], clock: FakeClock) -> None:
        svc = Service("svc")
        app = make_app(svc)
        async with app:
            assert await app.states.compare_and_set("counter", 1, version=0)
            assert not await app.states.compare_and_set("counter", 99, version=0)
            value, version = await app.states.get_versioned("counter")
            assert (value, version) == (1, 1)
            assert await app.states.compare_and_set("counter", 2, version=1)
            assert await app.states.get("counter") == 2
            await app.states.delete("counter")
            assert await app.states.get("counter", "gone") == "gone"

    async def test_state_conflict_in_a_handler_retries_the_job(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc, rec = Service("svc"), Recorder()
        raced = asyncio.Event()

        @svc.queue_worker("increment", lifecycle=Lifecycle(max_attempts=3, retry=NO_JITTER))
        async def increment(ctx: Context, job: dict[str, Any]) -> None:
            value, version = await ctx.states.get_versioned("counter")
            rec.calls.append(("increment", value, ctx.job.attempt if ctx.job else 0))
            if not raced.is_set():
                raced.set()
                await app.states.set("counter", 100)  # another writer wins the race
            await ctx.states.compare_and_set("counter", (value or 0) + 1, version)

        app = make_app(svc)
        async with running(app):
            await app.states.set("counter", 0)
            await app.enqueue("increment", {})
            await wait_until(lambda: _stats(app, "increment", lambda s: s.scheduled == 1))
            clock.advance(10)
            await wait_until(lambda: rec.attempts("increment") == [1, 2])
            await wait_until(lambda: app.states.get("counter"), message="counter")
            await wait_until(lambda: _state_is(app, "counter", 101))

    async def test_cancel_deletes_a_pending_timer(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("request_approval")
        async def request_approval(ctx: Context, job: dict[str, Any]) -> None:
            await ctx.enqueue("approval_timeout", {}, delay=3600, idempotency_key="timeout:order-1")

        @svc.queue_worker("approve")
        async def approve(ctx: Context, job: dict[str, Any]) -> None:
            await ctx.cancel("approval_timeout", "timeout:order-1")
            rec.calls.append(("approve", None, 0))

        @svc.queue_worker("approval_timeout")
        async def approval_timeout(ctx: Context, job: dict[str, Any]) -> None:
            rec.calls.append(("approval_timeout", None, 0))

        app = make_app(svc)
        async with running(app):
            await app.enqueue("request_approval", {})
            await wait_until(lambda: _stats(app, "approval_timeout", lambda s: s.scheduled == 1))
            await app.enqueue("approve", {})
            await wait_until(lambda: rec.calls)
            await wait_until(lambda: _stats(app, "approval_timeout", lambda s: s.scheduled == 0))
            clock.advance(3601)
            await _polled(app)
        assert rec.seen("approval_timeout") == []

    async def test_command_effects_commit_when_it_returns(self, make_app: Callable[..., App]) -> None:
        svc, rec = Service("svc"), Recorder()

        class Accepted(BaseModel):
            order_id: str

        @svc.command("place_order", payload=Item, result=Accepted, emits=["order_placed"])
        async def place_order(ctx: Context, cmd: Item) -> Accepted:
            await ctx.emit("order_placed", {"n": cmd.n})
            return Accepted(order_id=f"order-{cmd.n}")

        @svc.subscription("order_placed")
        async def on_placed(ctx: Context, event: Item) -> None:
            rec.calls.append(("on_placed", event.n, 0))

        app = make_app(svc)
        async with running(app):
            result = await app.invoke("place_order", {"n": 4})
            await wait_until(lambda: rec.calls)
            with pytest.raises(PayloadValidationError):
                await app.invoke("place_order", {"n": "not a number"})
        assert result == Accepted(order_id="order-4") and rec.seen("on_placed") == [4]

    # schedules

    async def test_schedule_fires_once_per_tick_with_two_schedulers_racing(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc, rec = Service("svc"), Recorder()
        clock.advance(3600 - clock.now() % 3600)  # on the hour

        @svc.schedule("every_minute", cron="* * * * *")
        async def every_minute(ctx: Context) -> None:
            assert ctx.message is not None
            rec.calls.append(("every_minute", ctx.message.payload["tick"], 0))

        replica_a, replica_b = make_app(svc), make_app(svc)
        async with running(replica_a), running(replica_b):
            for fired in range(1, 5):
                if fired > 1:  # both replicas race for the next tick
                    clock.advance(60)
                    await asyncio.gather(replica_a._scheduler.fire_due(), replica_b._scheduler.fire_due())  # type: ignore[union-attr]
                await wait_until(lambda: len(rec.calls) >= fired)  # noqa: B023
                await wait_until(lambda: _stats(replica_a, "every_minute", lambda s: s.ready + s.leased == 0))
            await _polled(replica_a, replica_b)
        ticks = rec.seen("every_minute")
        assert len(ticks) == len(set(ticks)) == 4

    @pytest.mark.parametrize(("catch_up", "expected"), [("none", 0), ("latest", 1), ("all", 5)])
    async def test_missed_ticks_follow_catch_up(
        self, make_app: Callable[..., App], clock: FakeClock, catch_up: str, expected: int
    ) -> None:
        svc, rec = Service("svc"), Recorder()
        clock.advance(3600 - clock.now() % 3600 + 30)

        @svc.schedule("hourly", every=3600, catch_up=catch_up, misfire_grace=60)  # type: ignore[arg-type]
        async def hourly(ctx: Context) -> None:
            rec.calls.append(("hourly", None, 0))

        app = make_app(svc)
        async with running(app):  # first start records the schedule without firing past ticks
            await wait_until(lambda: app.states.get("conveyor:schedule:hourly"))
        clock.advance(5 * 3600 + 600)  # down for five ticks, back 10 minutes after the last
        async with running(app):
            if expected:
                await wait_until(lambda: len(rec.calls) == expected)
            await wait_until(lambda: _stats(app, "hourly", lambda s: s.ready + s.leased == 0))
            await _polled(app)
        assert len(rec.calls) == expected

    # shutdown

    async def test_no_more_jobs_run_at_once_than_the_concurrency(self, make_app: Callable[..., App]) -> None:
        # Chains keep the worker's commits bringing new jobs back with them (where the backend
        # leases in the commit's round trip) while the lease loop takes the rest.
        svc = Service("svc")
        running_now, most, done = 0, 0, 0

        @svc.queue_worker("chain", payload=Item)
        async def chain(ctx: Context, job: Item) -> None:
            nonlocal running_now, most, done
            running_now += 1
            most = max(most, running_now)
            for _ in range(3):
                await asyncio.sleep(0)
            if job.n % 4:
                await ctx.enqueue("chain", {"n": job.n - 1})
            running_now -= 1
            done += 1

        app = make_app(svc, worker=WorkerConfig(concurrency=3, poll_interval=0.05, shutdown_grace=5))
        async with running(app):
            await app.enqueue_many("chain", [{"n": 4 * k + 3} for k in range(10)])
            await wait_until(lambda: done == 40, timeout=30)
        assert most == 3

    async def test_a_drain_gets_its_next_jobs_from_its_commits(self, make_app: Callable[..., App]) -> None:
        # Where the backend leases in the commit's round trip, a worker working through a backlog
        # gets its next jobs with each commit: its lease loop only leases to start (and at the
        # end). A settled job's slot must be free for the commit that the jobs leased with it
        # make next, or every other commit goes without a lease, and a lease call follows it.
        svc = Service("svc")
        done = 0

        @svc.queue_worker("work")
        async def work(ctx: Context, job: dict[str, Any]) -> None:
            nonlocal done
            done += 1

        app = make_app(svc, worker=WorkerConfig(concurrency=5, poll_interval=0.05, shutdown_grace=5))
        if not isinstance(app.backend, CommitAndLease):
            pytest.skip("this backend leases in a call of its own")
        backend = app.backend
        calls = {"lease": 0, "commit_and_lease": 0}
        lease, commit_and_lease = backend.lease, backend.commit_and_lease
        inside = 0  # the in-memory reference's commit_and_lease calls its own lease

        async def counted_lease(*args: Any, **kwargs: Any) -> Any:
            calls["lease"] += not inside
            return await lease(*args, **kwargs)

        async def counted_commit_and_lease(*args: Any, **kwargs: Any) -> Any:
            nonlocal inside
            calls["commit_and_lease"] += 1
            inside += 1
            try:
                return await commit_and_lease(*args, **kwargs)
            finally:
                inside -= 1

        async with app:
            await app.enqueue_many("work", [{}] * 200)
            backend.lease = counted_lease  # type: ignore[method-assign]
            backend.commit_and_lease = counted_commit_and_lease  # type: ignore[method-assign]
            async with running(app):
                await wait_until(lambda: done == 200, timeout=30)
        assert calls["commit_and_lease"] >= 200 // 5
        assert calls["lease"] <= 5, calls

    async def test_graceful_shutdown_lets_running_jobs_finish(self, make_app: Callable[..., App]) -> None:
        svc, rec = Service("svc"), Recorder()
        started, gate = asyncio.Event(), asyncio.Event()

        @svc.queue_worker("busy")
        async def busy(ctx: Context, job: dict[str, Any]) -> None:
            started.set()
            await gate.wait()
            rec.calls.append(("busy", None, 0))

        app = make_app(svc)
        async with app:
            await app.enqueue("busy", {})
            server = asyncio.create_task(app.serve())
            await started.wait()
            app.stop()
            gate.set()
            await server
            assert rec.calls == [("busy", None, 0)]
            assert await app.backend.lease({"busy": 30.0}, 1, app.clock.now()) == []

    async def test_graceful_shutdown_releases_unfinished_jobs_without_spending_an_attempt(
        self, make_app: Callable[..., App]
    ) -> None:
        svc = Service("svc")
        started = asyncio.Event()

        @svc.queue_worker("stuck", emits=["stuck_done"])
        async def stuck(ctx: Context, job: dict[str, Any]) -> None:
            await ctx.emit("stuck_done", {})
            started.set()
            await asyncio.Event().wait()

        app = make_app(svc, worker=WorkerConfig(concurrency=4, poll_interval=0.05, shutdown_grace=0.05))
        async with app:
            await app.enqueue("stuck", {})
            server = asyncio.create_task(app.serve())
            await started.wait()
            app.stop()
            await server
            [again] = await app.backend.lease({"stuck": 30.0}, 1, app.clock.now())
            assert again.attempt == 1

    # bad input

    async def test_invalid_payload_is_dead_lettered_and_the_worker_goes_on(
        self, make_app: Callable[..., App]
    ) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("typed", payload=Item)
        async def typed(ctx: Context, job: Item) -> None:
            rec.calls.append(("typed", job.n, 0))

        app = make_app(svc)
        with pytest.raises(PayloadValidationError, match="Item"):
            async with app:
                await app.enqueue("typed", {"n": "seven"})
        async with running(app):
            await _store_raw(
                app,
                "typed",
                b'{"v":1,"id":"bad","kind":"job","name":"typed",'
                b'"payload":{"n":"seven"},"correlation_id":"bad"}',
            )
            [entry] = await wait_until(lambda: app.dead_letters("typed").list())
            await app.enqueue("typed", {"n": 8})
            await wait_until(lambda: rec.calls)
        assert "does not match Item" in entry.error.message and entry.attempts == 1
        assert rec.seen("typed") == [8]

    async def test_undecodable_message_is_dead_lettered_and_the_worker_goes_on(
        self, make_app: Callable[..., App]
    ) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("raw")
        async def raw(ctx: Context, job: dict[str, Any]) -> None:
            rec.calls.append(("raw", job, 0))

        app = make_app(svc)
        async with running(app):
            await _store_raw(app, "raw", b"\x00not json at all")
            [entry] = await wait_until(lambda: app.dead_letters("raw").list())
            await app.enqueue("raw", {"ok": True})
            await wait_until(lambda: rec.calls)
        assert "not valid JSON" in entry.error.message and entry.error.type.endswith(
            "UndecodableMessageError"
        )
        assert rec.seen("raw") == [{"ok": True}]

    async def test_event_nobody_subscribed_to_is_reported_and_the_worker_goes_on(
        self, make_app: Callable[..., App], caplog: pytest.LogCaptureFixture
    ) -> None:
        svc, rec = Service("svc"), Recorder()

        @svc.queue_worker("plain")
        async def plain(ctx: Context, job: dict[str, Any]) -> None:
            rec.calls.append(("plain", None, 0))

        app = make_app(svc)
        async with running(app):
            with caplog.at_level(logging.WARNING, logger="conveyor"):
                await app.emit("nobody_listens", {})
            assert any("has no subscription" in r.getMessage() for r in caplog.records)
            await app.enqueue("plain", {})
            await wait_until(lambda: rec.calls)

    async def test_handler_raising_base_exceptions_does_not_kill_the_worker(
        self, make_app: Callable[..., App]
    ) -> None:
        svc, rec = Service("svc"), Recorder()

        class Custom(BaseException):
            pass

        errors: dict[int, BaseException] = {
            1: KeyboardInterrupt(),
            2: SystemExit(3),
            3: Custom("odd"),
        }

        @svc.queue_worker("explodes", payload=Item, lifecycle=Lifecycle(max_attempts=1))
        async def explodes(ctx: Context, job: Item) -> None:
            if job.n in errors:
                raise errors[job.n]
            rec.calls.append(("explodes", job.n, 0))

        app = make_app(svc)
        async with running(app):
            for n in (1, 2, 3, 4):
                await app.enqueue("explodes", {"n": n})
            dead = await wait_until(lambda: _at_least(app.dead_letters("explodes").list(), 3))
            await wait_until(lambda: rec.calls)
        assert sorted(d.error.type.rsplit(".", 1)[-1] for d in dead) == [
            "Custom",
            "KeyboardInterrupt",
            "SystemExit",
        ]
        assert rec.seen("explodes") == [4]

    async def test_undeclared_emit_is_a_clear_error(self, make_app: Callable[..., App]) -> None:
        svc = Service("svc")

        @svc.queue_worker("sloppy", emits=["declared"], lifecycle=Lifecycle(max_attempts=1))
        async def sloppy(ctx: Context, job: dict[str, Any]) -> None:
            await ctx.emit("not_declared", {})

        app = make_app(svc)
        async with running(app):
            await app.enqueue("sloppy", {})
            [entry] = await wait_until(lambda: app.dead_letters("sloppy").list())
        assert entry.error.type.endswith(UndeclaredEmitError.__name__)
        assert "not_declared" in entry.error.message and "emits=" in entry.error.message

    async def test_oversized_payload_is_rejected_at_enqueue(self, make_app: Callable[..., App]) -> None:
        svc = Service("svc")

        @svc.queue_worker("big")
        async def big(ctx: Context, job: dict[str, Any]) -> None:
            pass

        app = make_app(svc, max_payload_bytes=1000)
        async with app:
            with pytest.raises(PayloadTooLargeError, match="over the limit of 1000"):
                await app.enqueue("big", {"blob": "x" * 2000})


async def _polled(*apps: App) -> None:
    """Until each app's worker has looked for jobs twice more: what it could run by now, it ran."""
    targets = [(worker, worker.lease_rounds + 2) for app in apps for worker in app._workers]
    await wait_until(lambda: all(worker.lease_rounds >= target for worker, target in targets))


async def _stats(app: App, queue: str, check: Callable[[Any], bool]) -> bool:
    [stats] = await app.stats([queue])
    return check(stats)


async def _status_with_steps(app: App, instance: str, done: int) -> Any:
    status = await app.workflows.status(instance)
    return status if sum(step.state == "succeeded" for step in status.steps) >= done else None


async def _at_least(listing: Any, count: int) -> Any:
    items = await listing
    return items if len(items) >= count else None


async def _state_is(app: App, key: str, value: Any) -> bool:
    return bool(await app.states.get(key) == value)


async def _store_raw(app: App, queue: str, body: bytes) -> None:
    """Store a message as if a foreign or broken producer had written it."""
    now = app.clock.now()
    await app.backend.commit(
        [Commit(effects=Effects(jobs=[NewJob(f"raw-{now}", queue, body, now, now)]))], now
    )
