"""The robustness contract: one bad job fails alone, and bad input never stops a worker.

Each test feeds a worker something hostile (a value the backend cannot store, a broken envelope,
a handler that will not stop) next to good jobs, and checks that the bad job gets a dead letter
with its own reason on its first chance while everything else flows. Subclass
:class:`RobustnessContract` and provide ``backend_url`` as for
:class:`~conveyor.testing.runtime_contract.RuntimeContract`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, field_validator

from conveyor import App, Context, Lifecycle, PermanentError, Retry, Service, WorkerConfig
from conveyor.model.errors import (
    LeaseLostError,
    PayloadValidationError,
    UnknownQueueError,
    UnstorableTextError,
)
from conveyor.ports import Backend, Commit, DeadLetter, Effects, NewJob, StateOp, StateWrite
from conveyor.runtime.worker import MAX_MESSAGE_CHARS
from conveyor.testing import FakeClock, running, wait_until
from conveyor.testing.runtime_contract.fixtures import AppFixtures, _store_raw

GOOD_JOBS = 40
"""Good jobs finishing at the same instant as the bad ones, so they share one commit batch."""

BadStep = Callable[[Context, str], Awaitable[None]]


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

    # a job whose commit cannot be stored fails alone (issue 14, item 1)

    async def test_a_call_given_unstorable_text_fails_its_job_alone(
        self, make_app: Callable[..., App]
    ) -> None:
        async def bad(ctx: Context, kind: str) -> None:
            if kind == "surrogate state key":
                await ctx.states.set("sku:a\ud800b", 1)
            elif kind == "nul state key":
                await ctx.states.set("sku:a\x00b", 1)
            elif kind == "surrogate state value":
                await ctx.states.set("sku", {"name": "a\ud800b"})
            elif kind == "nul idempotency key":
                await ctx.enqueue("work", {"kind": "good", "n": -1}, idempotency_key="order\x0042")
            elif kind == "nul correlation id":
                await ctx.emit("noted", {}, correlation_id="order\x0042")

        kinds = [
            "surrogate state key",
            "nul state key",
            "surrogate state value",
            "nul idempotency key",
            "nul correlation id",
        ]
        app, dead, runs = await beside_good_jobs(make_app, bad, kinds)
        await assert_good_jobs_committed_once(app, runs)
        expected = {
            "surrogate state key": (
                "UnstorableTextError",
                "state key 'sku:a\\ud800b' holds a lone surrogate",
            ),
            "nul state key": ("UnstorableTextError", "state key 'sku:a\\x00b' holds a NUL character"),
            "surrogate state value": (
                "PayloadValidationError",
                "the string at $.name holds a lone surrogate",
            ),
            "nul idempotency key": ("UnstorableTextError", "idempotency key 'order\\x0042' holds a NUL"),
            "nul correlation id": ("UnstorableTextError", "correlation id 'order\\x0042' holds a NUL"),
        }
        for kind, (error_type, message) in expected.items():
            entry = dead[kind]
            assert entry.attempts == 1, kind
            assert entry.error.type.endswith(error_type), (kind, entry.error)
            assert message in entry.error.message, (kind, entry.error.message)
        assert all(runs[n] == 1 for n in range(GOOD_JOBS, GOOD_JOBS + len(kinds)))

    async def test_a_commit_refused_at_commit_fails_its_job_alone(self, make_app: Callable[..., App]) -> None:
        """What the calls cannot see (effects built by hand) is refused when the commit is
        submitted, or by the backend; the job is dead-lettered on that attempt with the reason,
        without the effects, beside good jobs. A stored message whose correlation id cannot be
        stored is dead-lettered as undecodable, beside them too."""

        async def bad(ctx: Context, kind: str) -> None:
            if kind == "raw":  # its commit's history entries carry the stored correlation id
                await ctx.states.set("raw:effect", 1)
            else:
                ctx.buffer.effects.states.append(StateWrite("sku:a\ud800b", StateOp.SET, b"1"))

        app, dead, runs = await beside_good_jobs(make_app, bad, ["hand-built state write"], raw_jobs=1)
        await assert_good_jobs_committed_once(app, runs)
        hand_built, inherited = dead["hand-built state write"], dead["raw"]
        assert hand_built.attempts == inherited.attempts == 1
        assert hand_built.error.type.endswith("CommitRejectedError"), hand_built.error
        assert "state key 'sku:a\\ud800b' holds a lone surrogate" in hand_built.error.message
        # a stored correlation id holding a NUL is refused when the envelope is decoded, before
        # the handler runs (no commit could carry it on PostgreSQL)
        assert inherited.error.type.endswith("UndecodableMessageError"), inherited.error
        assert "'correlation_id' holds a NUL" in inherited.error.message
        assert runs[GOOD_JOBS + 1] == 0
        async with app:
            assert await app.states.get("raw:effect") is None

    # NaN and ±Infinity are refused at the call, nothing stored (issue 14, item 6)

    async def test_nan_and_infinity_are_refused_where_they_are_given(
        self, make_app: Callable[..., App]
    ) -> None:
        svc = Service("svc")

        class Price(BaseModel):
            amount: float

        refused: list[str] = []

        @svc.queue_worker("plain", emits=["noted"])
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

    # handlers that ignore cancellation; retries on time

    async def test_handler_ignoring_cancellation_fails_at_its_timeout_and_frees_its_slot(
        self, make_app: Callable[..., App]
    ) -> None:
        svc, release = Service("svc"), asyncio.Event()
        calls: list[str] = []
        refused: list[type[BaseException]] = []

        @svc.queue_worker("stubborn", emits=["late"], lifecycle=Lifecycle(timeout=0.05, max_attempts=1))
        async def stubborn(ctx: Context, job: dict[str, Any]) -> None:
            calls.append("stubborn")
            await _ignore_cancellation_until(release)
            for write in (ctx.states.set("late", True), ctx.emit("late", {})):
                try:  # long past its timeout: none of this may commit
                    await write
                except BaseException as exc:
                    refused.append(type(exc))

        @svc.queue_worker("good")
        async def good(ctx: Context, job: dict[str, Any]) -> None:
            calls.append("good")

        app = make_app(svc, worker=WorkerConfig(concurrency=1, poll_interval=0.05, shutdown_grace=5))
        async with running(app):
            try:
                await app.enqueue("stubborn", {})
                await wait_until(lambda: calls == ["stubborn"])
                [entry] = await wait_until(lambda: app.dead_letters("stubborn").list())
                assert entry.error.type.endswith("HandlerTimeoutError")
                # its one slot is free again although the handler still runs
                await app.enqueue("good", {})
                await wait_until(lambda: calls == ["stubborn", "good"])
                assert [w.abandoned for w in app._workers] == [1]
            finally:
                release.set()
            await wait_until(lambda: refused)
            assert refused == [LeaseLostError, LeaseLostError]
            assert await app.states.get("late") is None
            [stats] = await app.stats(["stubborn"])
            assert (stats.ready, stats.leased, stats.scheduled, stats.dead) == (0, 0, 0, 1)

    async def test_shutdown_releases_a_job_whose_handler_ignores_cancellation(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        release, attempts = asyncio.Event(), list[int]()
        svc = _stubborn_service(release, attempts)
        app = make_app(svc, worker=WorkerConfig(concurrency=2, poll_interval=0.05, shutdown_grace=0.1))
        async with running(app):
            try:
                await app.enqueue("stubborn", {})
                await app.enqueue("stubborn_timed", {})
                await wait_until(lambda: attempts == [1, 1])
                app.stop()
                await wait_until(lambda: not app._workers, timeout=5, message="the worker to stop")
            finally:
                release.set()  # (before running() waits for the worker, which would hang without the fix)
        for queue in ("stubborn", "stubborn_timed"):
            await _released_unspent(make_app(svc), queue, clock)

    async def test_second_stop_releases_running_jobs_without_waiting_out_the_grace(
        self, make_app: Callable[..., App], clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger="conveyor.worker")
        release, attempts = asyncio.Event(), list[int]()
        svc = _stubborn_service(release, attempts)

        @svc.queue_worker("slow")
        async def slow(ctx: Context, job: dict[str, Any]) -> None:
            attempts.append(ctx.job.attempt if ctx.job else 0)
            await release.wait()

        app = make_app(svc, worker=WorkerConfig(concurrency=2, poll_interval=0.05, shutdown_grace=300))
        async with running(app):
            try:
                await app.enqueue("slow", {})
                await app.enqueue("stubborn", {})
                await wait_until(lambda: attempts == [1, 1])
                app.stop()
                await wait_until(lambda: "waiting up to 300s for 2 running jobs" in caplog.text)
                app.stop(now=True)
                await wait_until(lambda: not app._workers, timeout=5, message="the worker to stop")
            finally:
                release.set()
        for queue in ("slow", "stubborn"):
            await _released_unspent(make_app(svc), queue, clock)

    async def test_retries_start_at_their_due_times_not_a_poll_later(
        self, backends: Callable[[], Backend]
    ) -> None:
        # A clock whose sleeps end only at their deadlines: the worker must wake itself on time for
        # every retry (a poll interval of a minute would otherwise run them all a minute late).
        clock = FakeClock(early_wakeups=False)
        svc, count = Service("svc"), 30
        delays = {n: 0.1 + n * 0.0071 for n in range(count)}  # distinct due times over 0.1-0.31 s
        due: dict[int, float] = {}
        started: dict[int, float] = {}

        @svc.queue_worker("spread", lifecycle=Lifecycle(max_attempts=2))
        async def spread(ctx: Context, job: dict[str, int]) -> None:
            n = job["n"]
            if ctx.job is not None and ctx.job.attempt == 1:
                due[n] = clock.now() + delays[n]  # the clock stands still during the attempt
                raise Retry(delay=delays[n])
            started[n] = clock.now()

        app = _polling_every_minute(svc, backends(), clock)
        async with running(app):
            await app.enqueue_many("spread", [{"n": n} for n in range(count)])
            await wait_until(lambda: _scheduled(app, "spread", count))
            step, last, start = 0.001, max(due.values()), clock.now()
            while clock.now() < last:
                clock.advance(step)
                now = clock.now()
                ready = {n for n, at in due.items() if at <= now}

                def all_due_started(ready: set[int] = ready) -> bool:
                    return ready <= started.keys()

                await wait_until(
                    all_due_started, timeout=5, message=f"the retries due by +{now - start:.3f}s to start"
                )
        lateness = {n: started[n] - due[n] for n in due}
        assert all(0 <= late <= step for late in lateness.values()), lateness

    async def test_a_delayed_job_its_handler_enqueued_starts_at_its_due_time(
        self, backends: Callable[[], Backend]
    ) -> None:
        clock = FakeClock(early_wakeups=False)
        svc, started = Service("svc"), []

        @svc.queue_worker("parent")
        async def parent(ctx: Context, job: dict[str, Any]) -> None:
            await ctx.enqueue("child", {}, delay=0.25)

        @svc.queue_worker("child")
        async def child(ctx: Context, job: dict[str, Any]) -> None:
            started.append(clock.now())

        app = _polling_every_minute(svc, backends(), clock)
        async with running(app):
            await app.enqueue("parent", {})
            await wait_until(lambda: _scheduled(app, "child", 1))
            due = clock.now() + 0.25
            clock.advance(0.2501)  # (a hair past: a strict sleep may end a rounding error after due)
            await wait_until(lambda: started, timeout=5, message="the delayed job to start")
        assert len(started) == 1 and due <= started[0] < due + 0.001

    async def test_base_exceptions_of_a_timed_handler_do_not_end_the_worker(
        self, make_app: Callable[..., App]
    ) -> None:
        """A handler with a timeout runs in a task of its own; SystemExit or KeyboardInterrupt
        raised there would reach the event loop and end the process, not its job."""
        svc, ran = Service("svc"), []

        class Custom(BaseException):
            pass

        errors: dict[int, BaseException] = {1: KeyboardInterrupt(), 2: SystemExit(3), 3: Custom("odd")}

        @svc.queue_worker("timed", lifecycle=Lifecycle(max_attempts=1, timeout=30))
        async def timed(ctx: Context, job: dict[str, int]) -> None:
            if job["n"] in errors:
                raise errors[job["n"]]
            ran.append(job["n"])

        app = make_app(svc)
        async with running(app):
            for n in (1, 2, 3, 4):
                await app.enqueue("timed", {"n": n})
            dead = await wait_until(lambda: _at_least(app.dead_letters("timed").list(), 3))
            await wait_until(lambda: ran)
        assert sorted(entry.error.type.rsplit(".", 1)[-1] for entry in dead) == [
            "Custom",
            "KeyboardInterrupt",
            "SystemExit",
        ]
        assert all(entry.attempts == 1 for entry in dead)
        assert ran == [4]

    # undecodable envelopes

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
            ran.append(ctx.job.attempt if ctx.job else 0)

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


async def beside_good_jobs(
    make_app: Callable[..., App], bad: BadStep, kinds: list[str], *, raw_jobs: int = 0
) -> tuple[App, dict[str, DeadLetter], Counter[int]]:
    """Run :data:`GOOD_JOBS` good jobs (each sets a state and emits), one job per bad kind (which
    runs ``bad(ctx, kind)``) and ``raw_jobs`` jobs stored by hand (see :func:`_enqueue_raw`; their
    kind is ``raw``; they are dead-lettered undecodable without running), all with
    ``max_attempts=1``. They are held at a gate until every one is running, then released at once,
    so their commits share one batch. Returns the app, the dead letters by kind and how many times
    each job ran."""
    svc = Service("svc")
    total = GOOD_JOBS + len(kinds) + raw_jobs
    gate, arrived, runs = asyncio.Event(), set[int](), Counter[int]()

    @svc.queue_worker("work", lifecycle=Lifecycle(max_attempts=1), emits=["noted"])
    async def work(ctx: Context, job: dict[str, Any]) -> None:
        runs[job["n"]] += 1
        arrived.add(job["n"])
        await gate.wait()
        if job["kind"] == "good":
            await ctx.states.set(f"done:{job['n']}", job["n"])
            await ctx.emit("noted", {"n": job["n"]})
        else:
            await bad(ctx, job["kind"])

    app = make_app(svc, worker=WorkerConfig(concurrency=total + 8, poll_interval=0.05, shutdown_grace=5))
    async with running(app):
        for n in range(GOOD_JOBS):
            await app.enqueue("work", {"kind": "good", "n": n})
        for n, kind in enumerate(kinds, GOOD_JOBS):
            await app.enqueue("work", {"kind": kind, "n": n})
        for n in range(GOOD_JOBS + len(kinds), total):
            await _enqueue_raw(app, n)
        # the raw jobs never run: their envelopes are refused when decoded, beside the others
        running_at_once = total - raw_jobs
        await wait_until(
            lambda: len(arrived) == running_at_once, message=f"{running_at_once} jobs running at once"
        )
        gate.set()
        expected = total - GOOD_JOBS
        dead = await wait_until(lambda: _at_least(app.dead_letters("work").list(), expected))
        await wait_until(lambda: _settled(app), message="every job settled")
    by_kind = {_payload(entry.body)["kind"]: entry for entry in dead}
    return app, by_kind, runs


async def assert_good_jobs_committed_once(app: App, runs: Counter[int]) -> None:
    """Every good job of :func:`beside_good_jobs` ran once and its effects are there."""
    async with app:
        for n in range(GOOD_JOBS):
            assert await app.states.get(f"done:{n}") == n, f"good job {n} did not commit"
    assert all(runs[n] == 1 for n in range(GOOD_JOBS)), "a good job ran more than once"


def _stubborn_service(release: asyncio.Event, attempts: list[int]) -> Service:
    """A service whose handlers record their attempt, then ignore cancellation: ``stubborn`` runs
    inline, ``stubborn_timed`` (a timeout far away) in a task of its own."""
    svc = Service("svc")

    async def stubborn(ctx: Context, job: dict[str, Any]) -> None:
        attempts.append(ctx.job.attempt if ctx.job else 0)
        await _ignore_cancellation_until(release)

    svc.queue_worker("stubborn")(stubborn)
    svc.queue_worker("stubborn_timed", lifecycle=Lifecycle(timeout=300))(stubborn)
    return svc


async def _ignore_cancellation_until(release: asyncio.Event) -> None:
    """What issue 14 met in the wild: a retry loop whose bare ``except`` swallows cancellation."""
    while not release.is_set():
        with contextlib.suppress(BaseException):  # the very bug: cancellation swallowed with the rest
            await asyncio.sleep(0.005)


def _polling_every_minute(svc: Service, backend: Backend, clock: FakeClock) -> App:
    """An app whose worker looks for jobs only once a minute unless it knows one comes due sooner."""
    worker = WorkerConfig(concurrency=50, poll_interval=60.0, shutdown_grace=5)
    return App([svc], backend=backend, clock=clock, worker=worker)


async def _scheduled(app: App, queue: str, count: int) -> bool:
    [stats] = await app.stats([queue])
    return stats.scheduled == count


async def _released_unspent(app: App, queue: str, clock: FakeClock) -> None:
    """The job of ``queue`` is ready again, and its next lease is its first attempt's again."""
    async with app:
        [stats] = await app.stats([queue])
        assert (stats.ready, stats.leased, stats.scheduled) == (1, 0, 0)
        [leased] = await app.backend.lease({queue: 60.0}, 10, clock.now())
        assert leased.attempt == 1


def _payload(body: bytes) -> dict[str, str]:
    import orjson

    payload: dict[str, str] = orjson.loads(body)["payload"]
    return payload


async def _at_least(listing: object, count: int) -> object:
    items = await listing  # type: ignore[misc]
    return items if len(items) >= count else None


async def _enqueue_raw(app: App, n: int) -> None:
    """Store a job for "work" as another producer might have: an envelope whose correlation id
    holds a NUL (valid JSON, ``\\u0000``), which no call of this conveyor would accept."""
    body = orjson.dumps(
        {
            "v": 1,
            "id": f"raw{n}",
            "kind": "job",
            "name": "work",
            "payload": {"kind": "raw", "n": n},
            "correlation_id": "order\x0042",
            "created_at": app.clock.now(),
        }
    )
    now = app.clock.now()
    await app.backend.commit([Commit(effects=Effects(jobs=[NewJob(f"raw{n}", "work", body, now, now)]))], now)


async def _settled(app: App) -> bool:
    [stats] = await app.stats(["work"])
    return stats.ready == stats.leased == stats.scheduled == 0


async def _ready(app: App, queue: str, count: int) -> bool:
    [stats] = await app.stats([queue])
    return stats.ready == count
