"""The runtime contract's idempotency, fan-out, subscriptions, state, timers and commands."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from conveyor import App, Context, Lifecycle, Service
from conveyor.model.errors import PayloadValidationError
from conveyor.testing import FakeClock, running, wait_until
from conveyor.testing.runtime_contract.fixtures import (
    NO_JITTER,
    AppFixtures,
    Item,
    Recorder,
    _polled,
    _state_is,
    _stats,
)


class EventsAndStateContract(AppFixtures):
    """Idempotency, fan-out, subscriptions, state, timers and commands (part of ``RuntimeContract``)."""

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
            rec.calls.append(("increment", value, ctx.job.attempt))
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

        @svc.queue_worker("request_approval", enqueues=["approval_timeout"])
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
