"""The robustness contract's timing: handlers that ignore cancellation fail at their timeout or are
released at shutdown, and retries and delayed jobs start at their due times."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import App, Context, Lifecycle, Retry, Service, WorkerConfig
from conveyor.model.errors import LeaseLostError
from conveyor.ports import Backend
from conveyor.testing import FakeClock, running, wait_until
from conveyor.testing.runtime_contract.fixtures import AppFixtures, _at_least, _stats


class TimingContract(AppFixtures):
    """Handlers that ignore cancellation; retries on time (part of ``RobustnessContract``)."""

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
            attempts.append(ctx.job.attempt)
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
            await wait_until(lambda: _stats(app, "spread", lambda s: s.scheduled == count))
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

        @svc.queue_worker("parent", enqueues=["child"])
        async def parent(ctx: Context, job: dict[str, Any]) -> None:
            await ctx.enqueue("child", {}, delay=0.25)

        @svc.queue_worker("child")
        async def child(ctx: Context, job: dict[str, Any]) -> None:
            started.append(clock.now())

        app = _polling_every_minute(svc, backends(), clock)
        async with running(app):
            await app.enqueue("parent", {})
            await wait_until(lambda: _stats(app, "child", lambda s: s.scheduled == 1))
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


def _stubborn_service(release: asyncio.Event, attempts: list[int]) -> Service:
    """A service whose handlers record their attempt, then ignore cancellation: ``stubborn`` runs
    inline, ``stubborn_timed`` (a timeout far away) in a task of its own."""
    svc = Service("svc")

    async def stubborn(ctx: Context, job: dict[str, Any]) -> None:
        attempts.append(ctx.job.attempt)
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


async def _released_unspent(app: App, queue: str, clock: FakeClock) -> None:
    """The job of ``queue`` is ready again, and its next lease is its first attempt's again."""
    async with app:
        [stats] = await app.stats([queue])
        assert (stats.ready, stats.leased, stats.scheduled) == (1, 0, 0)
        [leased] = await app.backend.lease({queue: 60.0}, 10, clock.now())
        assert leased.attempt == 1
