"""The runtime contract's operations of a running system: the worker registry, cancelling a running
job, and a handler cancelled once its lease is lost."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from conveyor import App, Context, HistoryKind, JobCancelledError, Lifecycle, Service, WorkerConfig
from conveyor.ports import HistoryEntry
from conveyor.runtime.registry import WORKER_TIMEOUT_FACTOR
from conveyor.testing import FakeClock, running, wait_until
from conveyor.testing.runtime_contract.fixtures import AppFixtures, Recorder, _polled, _stats

HEARTBEAT = 5.0
WATCH = 1.0


def _config(**kwargs: Any) -> WorkerConfig:
    settings: dict[str, Any] = {
        "concurrency": 8,
        "poll_interval": 0.05,
        "shutdown_grace": 5,
        "heartbeat_interval": HEARTBEAT,
        "watch_interval": WATCH,
    }
    return WorkerConfig(**(settings | kwargs))


async def _history_kinds(app: App, job_id: str) -> list[str]:
    return [entry.kind for entry in await app.backend.job_history(job_id)]


async def _settled(app: App, job_id: str) -> list[HistoryEntry]:
    """The history entries of ``job_id`` that its attempts wrote (not its enqueue)."""
    return [e for e in await app.backend.job_history(job_id) if e.kind != HistoryKind.ENQUEUED]


class OperationsContract(AppFixtures):
    """Workers and cancellation while serving (part of ``RuntimeContract``)."""

    async def test_registry_shows_a_serving_worker_and_drops_it_after_stop(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc = Service("svc")
        done = 0

        @svc.queue_worker("beta")
        async def beta(ctx: Context, job: dict[str, Any]) -> None:
            nonlocal done
            done += 1

        @svc.queue_worker("alpha")
        async def alpha(ctx: Context, job: dict[str, Any]) -> None: ...

        app = make_app(svc, worker=_config(concurrency=6))
        async with app:
            started = clock.now()
            async with running(app):
                [worker] = await wait_until(app.workers)
                assert worker.queues == ("alpha", "beta") and worker.concurrency == 6
                assert worker.started_at == started and worker.last_seen == started
                assert worker.settled == 0
                assert re.fullmatch(rf"{re.escape(worker.host)}:{worker.pid}:[0-9a-f]{{6}}", worker.id)
                await app.enqueue("beta", {})
                await wait_until(lambda: done == 1)
                await wait_until(lambda: app._workers[0].processed == 1)
                clock.advance(HEARTBEAT)  # the next beat carries the count and the time
                [worker] = await wait_until(
                    lambda: _at_least_seen(app, started + HEARTBEAT), message="the second heartbeat"
                )
                assert worker.settled == 1
            assert await app.workers() == []

    async def test_a_lease_records_the_worker_that_took_it(self, make_app: Callable[..., App]) -> None:
        svc, gate = Service("svc"), asyncio.Event()
        started = asyncio.Event()

        @svc.queue_worker("held")
        async def held(ctx: Context, job: dict[str, Any]) -> None:
            started.set()
            await gate.wait()

        app = make_app(svc, worker=_config())
        async with running(app):
            job_id = await app.enqueue("held", {})
            await started.wait()
            [lease] = await app.backend.leases("held")
            [worker] = await wait_until(app.workers)
            gate.set()
        assert lease.job_id == job_id and lease.worker == worker.id

    async def test_a_worker_that_stopped_beating_drops_out_after_three_intervals(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        app = make_app(Service("svc"), worker=_config())
        async with app:
            server = asyncio.create_task(app.serve())
            [worker] = await wait_until(app.workers)
            server.cancel()  # as a crash would: no clean stop, no unregistering
            await asyncio.wait({server})
            clock.advance(WORKER_TIMEOUT_FACTOR * HEARTBEAT)
            assert [w.id for w in await app.workers()] == [worker.id]
            clock.advance(0.1)
            assert await app.workers() == []

    async def test_a_cancel_request_reaches_the_handler_which_settles_its_job_cancelled(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc, rec = Service("svc"), Recorder()
        started = asyncio.Event()

        @svc.queue_worker(
            "export", emits=["exported"], enqueues=["audit"], lifecycle=Lifecycle(max_attempts=3)
        )
        async def export(ctx: Context, job: dict[str, Any]) -> None:
            rec.calls.append(("export", ctx.cancel_requested, ctx.job.attempt))
            await ctx.emit("exported", {})
            await ctx.enqueue("audit", {})
            started.set()
            await ctx.cancellation()
            rec.calls.append(("seen", ctx.cancel_requested, 0))
            ctx.raise_if_cancel_requested()

        @export.on_dead_letter
        async def hook(ctx: Context, job: dict[str, Any], error: BaseException) -> None:
            rec.calls.append(("hook", None, 0))

        @svc.subscription("exported")
        async def on_exported(ctx: Context, event: dict[str, Any]) -> None:
            rec.calls.append(("exported", None, 0))

        @svc.queue_worker("audit")
        async def audit(ctx: Context, job: dict[str, Any]) -> None:
            rec.calls.append(("audit", None, 0))

        app = make_app(svc, worker=_config())
        async with running(app):
            job_id = await app.enqueue("export", {}, correlation_id="report-1")
            await started.wait()
            assert await app.backend.request_cancel(job_id)
            clock.advance(WATCH)
            await wait_until(lambda: rec.seen("seen") == [True])
            await wait_until(lambda: _stats(app, "export", lambda s: s.ready + s.leased + s.scheduled == 0))
            clock.advance(100)  # no retry comes due
            await _polled(app)
            history = await app.backend.job_history(job_id)
            assert await app.dead_letters("export").list() == []
            assert await app.backend.job(job_id, clock.now()) is None
        assert rec.seen("export") == [False] and rec.attempts("export") == [1]
        assert rec.seen("hook") == rec.seen("exported") == rec.seen("audit") == []
        [entry] = [e for e in history if e.kind != HistoryKind.ENQUEUED]  # no SUCCEEDED
        assert entry.kind == HistoryKind.CANCELLED and entry.name == "export" and entry.message_id == job_id
        assert entry.detail is not None and orjson.loads(entry.detail)["requested"] is True

    async def test_a_handler_may_raise_job_cancelled_unasked(self, make_app: Callable[..., App]) -> None:
        svc = Service("svc")

        @svc.queue_worker("gives_up", lifecycle=Lifecycle(max_attempts=3))
        async def gives_up(ctx: Context, job: dict[str, Any]) -> None:
            raise JobCancelledError("nothing left to do")

        app = make_app(svc, worker=_config())
        async with running(app):
            job_id = await app.enqueue("gives_up", {}, correlation_id="c-1")
            [entry] = await wait_until(lambda: _settled(app, job_id), message="a settlement in history")
            assert await app.dead_letters("gives_up").list() == []
        assert entry.kind == HistoryKind.CANCELLED and entry.detail is not None
        assert orjson.loads(entry.detail)["requested"] is False

    async def test_a_handler_that_ignores_the_cancel_request_finishes_normally(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc, rec = Service("svc"), Recorder()
        started = asyncio.Event()

        @svc.queue_worker("stubborn", emits=["stubborn_done"])
        async def stubborn(ctx: Context, job: dict[str, Any]) -> None:
            started.set()
            await ctx.cancellation()
            rec.calls.append(("stubborn", ctx.cancel_requested, 0))
            await ctx.emit("stubborn_done", {})

        @svc.subscription("stubborn_done")
        async def on_done(ctx: Context, event: dict[str, Any]) -> None:
            rec.calls.append(("done", None, 0))

        app = make_app(svc, worker=_config())
        async with running(app):
            job_id = await app.enqueue("stubborn", {}, correlation_id="c-2")
            await started.wait()
            await app.backend.request_cancel(job_id)
            clock.advance(WATCH)
            await wait_until(lambda: rec.seen("done"))
            kinds = await _history_kinds(app, job_id)
        assert rec.seen("stubborn") == [True]
        assert HistoryKind.SUCCEEDED in kinds and HistoryKind.CANCELLED not in kinds

    @pytest.mark.parametrize("timeout", [None, 30.0], ids=["inline", "with_timeout"])
    async def test_a_handler_whose_lease_is_lost_is_cancelled_and_its_job_runs_again(
        self,
        make_app: Callable[..., App],
        clock: FakeClock,
        caplog: pytest.LogCaptureFixture,
        timeout: float | None,
    ) -> None:
        svc, rec = Service("svc"), Recorder()
        cancelled = asyncio.Event()

        @svc.queue_worker(
            "lost",
            emits=["lost_done"],
            lifecycle=Lifecycle(visibility_timeout=30, timeout=timeout, max_attempts=3),
        )
        async def lost(ctx: Context, job: dict[str, Any]) -> None:
            attempt = ctx.job.attempt
            rec.calls.append(("lost", None, attempt))
            await ctx.emit("lost_done", {"attempt": attempt})
            if attempt == 1:
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    cancelled.set()
                    raise

        @svc.subscription("lost_done")
        async def on_done(ctx: Context, event: dict[str, Any]) -> None:
            rec.calls.append(("done", event["attempt"], 0))

        app = make_app(svc, worker=_config())
        async with running(app):
            await app.enqueue("lost", {})
            await wait_until(lambda: rec.attempts("lost") == [1])
            clock.advance(31)  # past its deadline, without an extension
            await cancelled.wait()
            await wait_until(lambda: rec.seen("done") == [2])
            await _polled(app)
            assert app._workers[0].abandoned == 0
        assert rec.attempts("lost") == [1, 2] and rec.seen("done") == [2]
        messages = [record.getMessage() for record in caplog.records]
        assert any("lease lost, handler cancelled" in m for m in messages)
        assert not any("cancelled from inside its handler" in m for m in messages)

    async def test_a_heartbeat_keeps_the_lease_and_the_handler_runs_on(
        self, make_app: Callable[..., App], clock: FakeClock
    ) -> None:
        svc, rec = Service("svc"), Recorder()
        gate, started = asyncio.Event(), asyncio.Event()

        @svc.queue_worker("kept", lifecycle=Lifecycle(visibility_timeout=30, heartbeat=True))
        async def kept(ctx: Context, job: dict[str, Any]) -> None:
            rec.calls.append(("kept", None, ctx.job.attempt))
            started.set()
            try:
                await gate.wait()
            except asyncio.CancelledError:
                rec.calls.append(("cancelled", None, 0))
                raise
            rec.calls.append(("finished", None, 0))

        app = make_app(svc, worker=_config())
        async with running(app):
            await app.enqueue("kept", {})
            await started.wait()
            worker = app._workers[0]
            for _ in range(6):  # 60 s in steps of 10: twice the lease, each step extended
                extended = worker.lease_extensions
                clock.advance(10)
                await wait_until(lambda n=extended: worker.lease_extensions > n)  # type: ignore[misc]
            gate.set()
            await wait_until(lambda: rec.seen("finished"))
            await wait_until(lambda: worker.processed == 1)
        assert rec.attempts("kept") == [1] and rec.seen("cancelled") == []


async def _at_least_seen(app: App, when: float) -> Any:
    workers = await app.workers()
    return workers if workers and workers[0].last_seen >= when else None
