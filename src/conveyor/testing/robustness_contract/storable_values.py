"""The robustness contract's values: what is stored of an error is capped and storable, and NaN,
±Infinity and text no backend can store are refused where they are given, nothing stored."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from conveyor import App, Context, Lifecycle, Service
from conveyor.model.errors import PayloadValidationError, UnstorableTextError
from conveyor.runtime.error_text import MAX_MESSAGE_CHARS
from conveyor.testing import running, wait_until
from conveyor.testing.robustness_contract.commit_isolation import _payload
from conveyor.testing.runtime_contract.fixtures import AppFixtures, _at_least


class StorableValuesContract(AppFixtures):
    """Error text, NaN and ±Infinity, unstorable text (part of ``RobustnessContract``)."""

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

    # NaN and ±Infinity are refused at the call, nothing stored (issue 14, item 6)

    async def test_nan_and_infinity_are_refused_where_they_are_given(
        self, make_app: Callable[..., App]
    ) -> None:
        svc = Service("svc")

        class Price(BaseModel):
            amount: float

        refused: list[str] = []

        @svc.queue_worker("plain", emits=["noted"], enqueues=["plain", "priced"])
        async def plain(ctx: Context, job: dict[str, Any]) -> None:
            for call in (
                lambda: ctx.enqueue("plain", {"p": math.nan}),
                lambda: ctx.enqueue("priced", Price(amount=-math.inf)),
                lambda: ctx.emit("noted", [1, {"x": math.inf}]),
                lambda: ctx.states.set("k", {"x": math.nan}),
            ):
                with pytest.raises(PayloadValidationError) as raised:
                    await call()
                refused.append(str(raised.value))
            await ctx.states.set("handler", "done")

        @svc.queue_worker("priced", payload=Price)
        async def priced(ctx: Context, job: Price) -> None:
            pass

        app = make_app(svc)
        items = {"items": [{"price": 1.5}, {"price": None}, {"price": math.nan}]}
        async with app:
            with pytest.raises(
                PayloadValidationError, match=r"NaN at \$\.items\[2\]\.price is not valid JSON"
            ):
                await app.enqueue("plain", items)
            with pytest.raises(
                PayloadValidationError, match=r"payload 550 of queue 'plain': Infinity at \$\.v"
            ):
                await app.enqueue_many(
                    "plain", [{"v": n} for n in range(549)] + [{"v": None}, {"v": math.inf}]
                )
            with pytest.raises(PayloadValidationError, match=r"-Infinity at \$\.amount"):
                await app.enqueue("priced", Price(amount=-math.inf))
            with pytest.raises(PayloadValidationError, match=r"-Infinity at \$\.amount"):
                await app.enqueue("priced", {"amount": -math.inf})
            with pytest.raises(PayloadValidationError, match=r"payload of event 'noted': NaN at \$\['a b'\]"):
                await app.emit("noted", {"a b": math.nan})
            with pytest.raises(PayloadValidationError, match=r"value of state 'k': NaN at \$\[0\]"):
                await app.states.set("k", [math.nan])
            with pytest.raises(PayloadValidationError, match=r"value of state 'k': Infinity at \$\.amount"):
                await app.states.set("k", Price(amount=math.inf))
            stats = await app.stats(["plain", "priced"])
            assert all(s.ready == s.scheduled == 0 for s in stats), "a refused job was stored"
            assert await app.states.get("k") is None
        async with running(app):
            await app.enqueue("plain", {})
            await wait_until(lambda: app.states.get("handler"))
        assert refused == [
            "payload of a job for queue 'plain': NaN at $.p is not valid JSON",
            "payload of a job for queue 'priced': -Infinity at $.amount is not valid JSON",
            "payload of event 'noted': Infinity at $[1].x is not valid JSON",
            "value of state 'k': NaN at $.x is not valid JSON",
        ]
        async with app:
            assert await app.states.get("k") is None
            assert [s.ready for s in await app.stats(["plain", "priced"])] == [0, 0]

    async def test_unstorable_text_is_refused_where_it_is_given(self, make_app: Callable[..., App]) -> None:
        """Lone surrogates in payloads and keys, NUL in keys and ids: refused by the app's calls
        on every backend (the handler's are in the tests above), nothing stored."""
        svc = Service("svc")

        @svc.queue_worker("plain")
        async def plain(ctx: Context, job: dict[str, Any]) -> None:
            pass

        app = make_app(svc)
        async with app:
            with pytest.raises(PayloadValidationError, match=r"the string at \$\.sku holds a lone surrogate"):
                await app.enqueue("plain", {"sku": "a\ud800b"})
            with pytest.raises(
                PayloadValidationError, match=r"the key 'a\\udc00' at \$ holds a lone surrogate"
            ):
                await app.emit("noted", {"a\udc00": 1})
            with pytest.raises(UnstorableTextError, match="idempotency key 'k\\\\x00' holds a NUL"):
                await app.enqueue_many("plain", [{}] * 600, idempotency_keys=[None] * 599 + ["k\x00"])
            with pytest.raises(UnstorableTextError, match="correlation id"):
                await app.emit("noted", {}, correlation_id="c\ud800")
            with pytest.raises(UnstorableTextError, match="state key"):
                await app.states.set("sku:a\ud800b", 1)
            with pytest.raises(UnstorableTextError, match="state key"):
                await app.states.get("sku:a\x00b")
            with pytest.raises(PayloadValidationError, match="value of state 'k'"):
                await app.states.set("k", {"v": "\udfff"})
            await app.states.set("k", {"v": "a\x00b"})  # a NUL inside JSON is an escape: stored as is
            assert await app.states.get("k") == {"v": "a\x00b"}
            [stats] = await app.stats(["plain"])
            assert stats.ready == 0, "a refused job was stored"
