"""The robustness contract's corrupt records: a stored envelope that cannot be decoded, or a payload
its validator or its compensation cannot take, is dead-lettered on its first lease."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from pydantic import BaseModel, field_validator

from conveyor import App, Context, Lifecycle, Service
from conveyor.testing import FakeClock, running, wait_until
from conveyor.testing.runtime_contract.fixtures import AppFixtures, _at_least, _store_raw


class CorruptEnvelopesContract(AppFixtures):
    """Undecodable envelopes (part of ``RobustnessContract``)."""

    async def test_an_envelope_field_of_the_wrong_type_is_dead_lettered_on_its_first_lease(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc, ran = Service("svc"), []

        @svc.queue_worker("raw", lifecycle=Lifecycle(max_attempts=3))
        async def raw(ctx: Context, job: dict[str, Any]) -> None:
            ran.append(job)

        wrong: list[tuple[str, Any]] = [
            ("created_at", "abc"),
            ("created_at", [1]),
            ("id", 7),
            ("kind", "telegram"),
            ("correlation_id", None),
            ("correlation_id", "wf\x00"),  # a NUL: PostgreSQL could commit nothing of this job
            ("idempotency_key", ["k"]),
            ("saga", "refund"),
            ("trace", "00-abc"),  # read by tracing, which is on
        ]
        app = make_app(svc, tracing=True)
        async with running(app):
            bodies = [
                (field, orjson.dumps({**_ENVELOPE, "id": f"bad-{n}", field: value}))
                for n, (field, value) in enumerate(wrong)
            ]
            for _, body in bodies:
                await _store_raw(app, "raw", body)
                clock.advance(0.001)  # (_store_raw names each job after the time)
            dead = await wait_until(lambda: _at_least(app.dead_letters("raw").list(), len(bodies)))
            await app.enqueue("raw", {"ok": True})
            await wait_until(lambda: ran)
        assert ran == [{"ok": True}]
        by_body = {entry.body: entry for entry in dead}
        for field, body in bodies:
            entry = by_body[body]  # the raw body is kept
            assert entry.error.type.endswith("UndecodableMessageError"), (field, entry.error)
            assert f"field {field!r}" in entry.error.message, (field, entry.error)
            assert entry.attempts == 1, (field, entry.attempts)

    async def test_an_undecodable_job_past_max_attempts_is_dead_lettered_as_undecodable(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc = Service("svc")

        @svc.queue_worker("raw", lifecycle=Lifecycle(max_attempts=1, visibility_timeout=5))
        async def raw(ctx: Context, job: dict[str, Any]) -> None:
            pass

        app = make_app(svc)
        body = orjson.dumps({**_ENVELOPE, "created_at": [1]})
        async with app:
            await _store_raw(app, "raw", body)
            [first] = await app.backend.lease({"raw": 5.0}, 1, clock.now())  # a worker that died
        clock.advance(6)
        async with running(app):
            [entry] = await wait_until(lambda: app.dead_letters("raw").list())
        assert first.attempt == 1 and entry.attempts == 2 and entry.body == body
        assert entry.error.type.endswith("UndecodableMessageError")
        assert "'created_at' must be a number, found array [1]" in entry.error.message

    async def test_a_payload_validator_that_raises_any_error_dead_letters_its_job_at_once(
        self, make_app: Callable[..., App]
    ) -> None:
        svc, ran = Service("svc"), []

        class Count(BaseModel):
            n: int

            @field_validator("n", mode="before")
            @classmethod
            def whole(cls, value: Any) -> int:
                return int(value)  # a TypeError for a list: pydantic lets it through

        @svc.queue_worker("typed", payload=Count, lifecycle=Lifecycle(max_attempts=3))
        async def typed(ctx: Context, job: Count) -> None:
            ran.append(job.n)

        app = make_app(svc)
        async with running(app):
            await _store_raw(
                app, "typed", orjson.dumps({**_ENVELOPE, "name": "typed", "payload": {"n": [1]}})
            )
            [entry] = await wait_until(lambda: app.dead_letters("typed").list())
            await app.enqueue("typed", {"n": "2"})
            await wait_until(lambda: ran)
        assert ran == [2] and entry.attempts == 1
        assert entry.error.type.endswith("PayloadValidationError")
        assert "TypeError" in entry.error.message and "Count" in entry.error.message

    async def test_a_compensable_step_whose_payload_cannot_be_kept_is_dead_lettered_at_once(
        self, make_app: Callable[..., App]
    ) -> None:
        svc, ran = Service("svc"), []

        @svc.queue_worker("step", compensate="undo", lifecycle=Lifecycle(max_attempts=3))
        async def step(ctx: Context, job: Any) -> None:
            ran.append(ctx.job.attempt)

        @svc.queue_worker("undo")
        async def undo(ctx: Context, job: Any) -> None:
            pass

        deep = b"[" * 400 + b"]" * 400  # JSON can read it, but orjson writes at most 254 levels
        app = make_app(svc)
        async with running(app):
            body = orjson.dumps({**_ENVELOPE, "name": "step", "payload": "HERE"})
            await _store_raw(app, "step", body.replace(b'"HERE"', deep))
            [entry] = await wait_until(lambda: app.dead_letters("step").list())
        assert ran == [1] and entry.attempts == 1
        assert entry.error.type.endswith("PayloadValidationError")
        assert "cannot be kept for its compensation" in entry.error.message


_ENVELOPE: dict[str, Any] = {
    "v": 1,
    "id": "raw",
    "kind": "job",
    "name": "raw",
    "payload": {},
    "correlation_id": "raw",
    "created_at": 1.0,
}
"""A valid stored envelope, for tests that break one of its fields."""
