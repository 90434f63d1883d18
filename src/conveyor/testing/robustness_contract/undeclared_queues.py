"""The robustness contract's queues no service declares: enqueues refused naming the closest,
external queues, and jobs left behind showing in stats and health."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conveyor import App, Context, Lifecycle, PermanentError, Service
from conveyor.model.errors import UnknownQueueError
from conveyor.testing import running, wait_until
from conveyor.testing.runtime_contract.fixtures import AppFixtures, _stats


class UndeclaredQueuesContract(AppFixtures):
    """Queues no service declares (part of ``RobustnessContract``)."""

    async def test_enqueue_to_an_undeclared_queue_is_refused_naming_the_closest(
        self, make_app: Callable[..., App]
    ) -> None:
        svc = Service("svc")

        @svc.queue_worker("process_payment")
        async def process_payment(ctx: Context, job: dict[str, str]) -> None:
            pass

        @svc.queue_worker("ship", lifecycle=Lifecycle(max_attempts=1))
        async def ship(ctx: Context, job: dict[str, str]) -> None:
            await ctx.enqueue("proces_payment", job)

        app = make_app(svc)
        async with running(app):
            for refused in (
                app.enqueue("proces_payment", {}),
                app.enqueue_many("proces_payment", [{}, {}]),
            ):
                with pytest.raises(UnknownQueueError, match="did you mean 'process_payment'") as caught:
                    await refused
                assert caught.value.name == "proces_payment"
                assert caught.value.suggestions == ["process_payment"]
            await app.enqueue("ship", {})
            [dead] = await wait_until(lambda: app.dead_letters("ship").list())
            assert dead.error.type == "conveyor.model.errors.UnknownQueueError"
            assert "did you mean 'process_payment'" in dead.error.message
            assert await app.backend.queue_names() == ["ship"]  # its dead letter, nothing else

    async def test_external_queues_are_enqueued_to_and_known_to_health(
        self, make_app: Callable[..., App]
    ) -> None:
        svc = Service("svc")

        @svc.queue_worker("order", enqueues=["billing.charge"])
        async def order(ctx: Context, job: dict[str, str]) -> None:
            await ctx.enqueue("billing.charge", job)

        app = make_app(svc, external_queues=["billing.charge"])
        async with running(app):
            await app.enqueue("order", {"n": "1"})
            await app.enqueue("billing.charge", {"n": "2"})
            await app.enqueue("mail.send", {"n": "3"}, external=True)  # one call, not declared
            await wait_until(lambda: _stats(app, "billing.charge", lambda s: s.ready == 2))
            report = await app.health()
        assert report.undeclared_queues == ["mail.send"]
        assert report.problems == [
            "mail.send: 1 job(s) in a queue no service of this app declares; nothing here will run "
            "them (declare the queue, or name it in App(external_queues=[...]) if another app serves it)"
        ]
        assert report.queues["billing.charge"]["ready"] == 2 and report.status == "warn"

    async def test_jobs_left_in_a_queue_no_service_declares_show_in_stats_and_health(
        self, make_app: Callable[..., App]
    ) -> None:
        before, after = Service("svc"), Service("svc")

        @before.queue_worker("legacy", lifecycle=Lifecycle(max_attempts=1))
        async def legacy(ctx: Context, job: dict[str, str]) -> None:
            raise PermanentError("old code")

        @after.queue_worker("current")
        async def current(ctx: Context, job: dict[str, str]) -> None:
            pass

        old = make_app(before)
        async with running(old):  # the last deploy that served "legacy" left work behind
            await old.enqueue("legacy", {})
            await wait_until(lambda: old.dead_letters("legacy").list())
            await old.enqueue_many("legacy", [{}, {}], delay=3600)
        new = make_app(after)
        async with new:
            stats = {s.queue: s for s in await new.stats()}
            report = await new.health()
            assert await new.undeclared_queues() == ["legacy"]
        assert sorted(stats) == ["current", "legacy"]
        assert (stats["legacy"].scheduled, stats["legacy"].dead) == (2, 1)
        assert report.status == "warn" and report.undeclared_queues == ["legacy"]
        assert report.problems[0] == "legacy: 1 dead letter(s)"
        assert report.problems[1].startswith("legacy: 2 job(s) in a queue no service of this app declares")
