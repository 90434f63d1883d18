"""The runtime contract's bad input: invalid or undecodable messages, unknown events, base
exceptions, undeclared emits and oversized payloads fail alone while the worker goes on."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import App, Context, Lifecycle, Service
from conveyor.model.errors import PayloadTooLargeError, PayloadValidationError, UndeclaredEmitError
from conveyor.testing import running, wait_until
from conveyor.testing.runtime_contract.fixtures import AppFixtures, Item, Recorder, _at_least, _store_raw


class BadInputContract(AppFixtures):
    """Bad input (part of ``RuntimeContract``)."""

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
