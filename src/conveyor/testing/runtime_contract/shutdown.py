"""The runtime contract's concurrency and shutdown: no more jobs at once than the concurrency, a
drain fed by its commits, and a graceful stop that finishes or releases running jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from conveyor import App, Context, Service, WorkerConfig
from conveyor.ports import CommitAndLease
from conveyor.testing import running, wait_until
from conveyor.testing.runtime_contract.fixtures import AppFixtures, Item, Recorder, _stats


class ShutdownContract(AppFixtures):
    """Concurrency and shutdown (part of ``RuntimeContract``)."""

    async def test_no_more_jobs_run_at_once_than_the_concurrency(self, make_app: Callable[..., App]) -> None:
        # Chains keep the worker's commits bringing new jobs back with them (where the backend
        # leases in the commit's round trip) while the lease loop takes the rest.
        svc = Service("svc")
        running_now, most, done = 0, 0, 0

        @svc.queue_worker("chain", payload=Item, enqueues=["chain"])
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
                # the last jobs' commit too, or the stop may overtake it and it goes without a lease
                await wait_until(lambda: _stats(app, "work", lambda s: s.ready + s.leased == 0), timeout=30)
        assert calls["commit_and_lease"] >= 200 // 5, calls
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
