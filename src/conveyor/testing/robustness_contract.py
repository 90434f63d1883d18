"""The robustness contract: one bad job fails alone, and bad input never stops a worker.

Each test feeds a worker something hostile (a value the backend cannot store, a broken envelope,
a handler that will not stop) next to good jobs, and checks that the bad job gets a dead letter
with its own reason on its first chance while everything else flows. Subclass
:class:`RobustnessContract` and provide ``backend_url`` as for
:class:`~conveyor.testing.runtime_contract.RuntimeContract`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conveyor import App, Context, Lifecycle, PermanentError, Service
from conveyor.model.errors import UnknownQueueError
from conveyor.runtime.worker import MAX_MESSAGE_CHARS
from conveyor.testing import running, wait_until
from conveyor.testing.runtime_contract import AppFixtures


class RobustnessContract(AppFixtures):
    """Every backend passes these unchanged."""

    # what is stored of an error

    async def test_error_text_is_capped_and_storable(self, make_app: Callable[..., App]) -> None:
        svc = Service("svc")

        class Unprintable(Exception):
            def __str__(self) -> str:
                raise ValueError("no text for you")

        errors: dict[str, Exception] = {
            "huge": RuntimeError("x" * 5_000_000),
            "nul": RuntimeError("before\x00after"),
            "surrogate": RuntimeError("sku:a\ud800b"),
            "unprintable": Unprintable(),
        }

        @svc.queue_worker("fails", lifecycle=Lifecycle(max_attempts=1))
        async def fails(ctx: Context, job: dict[str, str]) -> None:
            raise errors[job["error"]]

        app = make_app(svc)
        async with running(app):
            for name in errors:
                await app.enqueue("fails", {"error": name})
            dead = await wait_until(lambda: _at_least(app.dead_letters("fails").list(), len(errors)))
        by_kind = {_payload(entry.body)["error"]: entry.error for entry in dead}
        huge = by_kind["huge"]
        assert len(huge.message) < MAX_MESSAGE_CHARS + 100 and "4,996,000 characters cut" in huge.message
        assert huge.traceback is not None and len(huge.traceback) < 20_000
        assert by_kind["nul"].message == "before\\x00after"
        assert by_kind["surrogate"].message == "sku:a\\ud800b"
        assert "str() raised ValueError" in by_kind["unprintable"].message

    # enqueue to a queue no service declares

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

        @svc.queue_worker("order")
        async def order(ctx: Context, job: dict[str, str]) -> None:
            await ctx.enqueue("billing.charge", job)

        app = make_app(svc, external_queues=["billing.charge"])
        async with running(app):
            await app.enqueue("order", {"n": "1"})
            await app.enqueue("billing.charge", {"n": "2"})
            await app.enqueue("mail.send", {"n": "3"}, external=True)  # one call, not declared
            await wait_until(lambda: _ready(app, "billing.charge", 2))
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


def _payload(body: bytes) -> dict[str, str]:
    import orjson

    payload: dict[str, str] = orjson.loads(body)["payload"]
    return payload


async def _at_least(listing: object, count: int) -> object:
    items = await listing  # type: ignore[misc]
    return items if len(items) >= count else None


async def _ready(app: App, queue: str, count: int) -> bool:
    [stats] = await app.stats([queue])
    return stats.ready == count
