"""A commit a backend cannot store fails alone, seen from the backends that refuse something.

The calls refuse NUL and lone surrogates for every backend (``RobustnessContract``); what is left
here is what one backend refuses on its own (PostgreSQL: a key longer than its index takes, a NUL
sent anyway; SQLite: a lone surrogate sent anyway), and how a backend and the worker's committer
treat it: the call is refused whole with ``CommitRejectedError`` and nothing of it applied, the
committer splits the batch so the good commits go through, the culprit is dead-lettered at once.
A failure of the backend itself, where every commit fails, dead-letters nobody.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import App, Context, Lifecycle, Service, WorkerConfig
from conveyor.backends import open_backend
from conveyor.model.errors import BackendError, CommitRejectedError
from conveyor.ports import Backend, Commit, CommitAndLease, CommitStatus, Effects, StateOp, StateWrite
from conveyor.runtime.clock import SystemClock
from conveyor.runtime.committer import Committer
from conveyor.testing import running, wait_until
from conveyor.testing.robustness_contract import (
    GOOD_JOBS,
    assert_good_jobs_committed_once,
    beside_good_jobs,
)
from conveyor.testing.runtime_contract import AppFixtures
from tests.conftest import drop, fresh_url

LONG_KEY = os.urandom(6000).hex()
"""12,000 random characters: more than PostgreSQL's btree index takes (8,191 bytes a row)."""


def state(key: str, value: bytes = b"1") -> Commit:
    return Commit(effects=Effects(states=[StateWrite(key, StateOp.SET, value)]))


REFUSED = {
    "sqlite": ["sku:a\ud800b"],
    "postgres": ["sku:a\ud800b", "sku:a\x00b", LONG_KEY],
}


@pytest.mark.parametrize("backend_kind", sorted(REFUSED))
async def test_a_refused_commit_fails_its_whole_call_and_applies_nothing(
    opened_backend: Backend, backend_kind: str
) -> None:
    for key in REFUSED[backend_kind]:
        with pytest.raises(CommitRejectedError):
            await opened_backend.commit([state("good"), state(key)], 1.0)
        assert await opened_backend.get_states(["good"]) == {}, f"a part of the call applied ({key[:12]!r})"
    # the connection is fine afterwards
    [result] = await opened_backend.commit([state("good")], 1.0)
    assert result.status is CommitStatus.OK and list(await opened_backend.get_states(["good"])) == ["good"]


class TestOnPostgres(AppFixtures):
    @pytest.fixture
    def backend_url(self, tmp_path: Path) -> Iterator[str]:
        url = fresh_url("postgres", tmp_path)
        yield url
        drop(url)

    async def test_a_batch_the_backend_refuses_is_split_and_only_the_culprit_fails(
        self, make_app: Callable[..., App]
    ) -> None:
        async def bad(ctx: Context, kind: str) -> None:
            await ctx.states.set(LONG_KEY, 1)  # passes every check: only PostgreSQL refuses it

        app, dead, runs = await beside_good_jobs(make_app, bad, ["long key"])
        await assert_good_jobs_committed_once(app, runs)
        entry = dead["long key"]
        assert entry.attempts == 1 and runs[GOOD_JOBS] == 1
        assert entry.error.type.endswith("CommitRejectedError")
        assert "index row requires" in entry.error.message

    async def test_when_every_commit_fails_nobody_is_dead_lettered(
        self, make_app: Callable[..., App], backend_url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A failure that is the backend's (here its commit function is gone) is not pinned on
        the jobs: they are not dead-lettered, and come back when their leases expire."""
        import psycopg

        svc = Service("svc")
        ran: list[int] = []

        @svc.queue_worker("work", lifecycle=Lifecycle(max_attempts=1))
        async def work(ctx: Context, job: dict[str, int]) -> None:
            await ctx.states.set(f"done:{job['n']}", 1)
            ran.append(job["n"])

        app = make_app(svc, worker=WorkerConfig(concurrency=16, poll_interval=0.05, shutdown_grace=5))
        schema = backend_url.rsplit("schema=", 1)[1]
        async with app:  # creates the schema
            for n in range(8):
                await app.enqueue("work", {"n": n})
        with psycopg.connect(backend_url.split("?", 1)[0], autocommit=True) as conn:
            conn.execute(f'DROP FUNCTION "{schema}".commit_batch CASCADE')
        with caplog.at_level(logging.ERROR, logger="conveyor.worker"):
            async with running(app):
                await wait_until(lambda: len(ran) == 8)
                await wait_until(
                    lambda: sum("could not commit" in r.getMessage() for r in caplog.records) == 8,
                    message="every job's commit to fail",
                )
            async with app:
                assert await app.dead_letters("work").list() == []
                [stats] = await app.stats(["work"])
                assert stats.leased == 8, "the jobs should come back when their leases expire"


async def test_a_backend_bug_in_one_batch_does_not_stop_the_committer(tmp_path: Path) -> None:
    """A commit call that answers the wrong number of results (a backend bug) fails its batch's
    jobs, which run again after their leases; the worker goes on committing everything else."""
    svc, ran = Service("svc"), []

    @svc.queue_worker("work", lifecycle=Lifecycle(visibility_timeout=1))
    async def work(ctx: Context, job: dict[str, int]) -> None:
        ran.append(job["n"])

    backend = open_backend(fresh_url("sqlite", tmp_path))
    assert not isinstance(backend, CommitAndLease)
    commit, broken = backend.commit, [True]

    async def commit_once_wrong(commits: list[Commit], now: float) -> list[Any]:
        results = await commit(commits, now)
        if broken and any(c.settlement is not None for c in commits):
            broken.clear()
            return results[:-1] if len(results) > 1 else [*results, results[0]]
        return results

    backend.commit = commit_once_wrong  # type: ignore[method-assign]  # SQLite: every settle is a commit()
    app = App([svc], backend=backend, worker=WorkerConfig(concurrency=4, poll_interval=0.05))
    async with running(app):
        await app.enqueue_many("work", [{"n": n} for n in range(20)])
        await wait_until(lambda: set(ran) == set(range(20)), timeout=15)
        await app.enqueue("work", {"n": 99})
        await wait_until(lambda: 99 in ran, timeout=5)
    assert not broken


@pytest.mark.parametrize("failures", [1, 1000])
async def test_a_lone_commit_failing_for_no_stated_reason_is_blamed_only_if_it_fails_again(
    tmp_path: Path, failures: int
) -> None:
    """Beside commits that went through, one failing with a plain BackendError (not a refusal)
    is tried once more alone: a passing failure (a deadlock, say) commits; a lasting one is the
    commit's own, and its job is refused with the error."""
    backend = open_backend(fresh_url("sqlite", tmp_path))
    await backend.connect()
    commit, left = backend.commit, [failures]

    async def fails_with_flaky(commits: list[Commit], now: float) -> list[Any]:
        if any(write.key == "flaky" for c in commits for write in c.effects.states) and left[0] > 0:
            if len(commits) == 1:
                left[0] -= 1
            raise BackendError("deadlock detected (made up)")
        return await commit(commits, now)

    backend.commit = fails_with_flaky  # type: ignore[method-assign]
    committer = Committer(backend, SystemClock())
    running_committer = asyncio.create_task(committer.run())
    try:
        keys = ["a", "b", "flaky", "c", "d"]
        outcomes = await asyncio.gather(
            *(committer.submit(state(key)) for key in keys), return_exceptions=True
        )
    finally:
        await committer.close()
        await running_committer
        records = await backend.get_states(keys)
        await backend.close()
    by_key = dict(zip(keys, outcomes, strict=True))
    assert all(getattr(by_key[key], "status", None) is CommitStatus.OK for key in "abcd")
    if failures == 1:
        assert getattr(by_key["flaky"], "status", None) is CommitStatus.OK and "flaky" in records
    else:
        assert isinstance(by_key["flaky"], CommitRejectedError) and "deadlock" in str(by_key["flaky"])
        assert "flaky" not in records
