"""The store contract's commits: a batch of commits each applied alone and in order, enqueues by
id and idempotency key, cancels, and leasing in the commit's round trip."""

from __future__ import annotations

import pytest

from conveyor.ports import Backend, Commit, CommitAndLease, CommitStatus, Effects, NewJob, Outcome
from conveyor.testing.store_contract.fixtures import ERR, T0, StoreFixtures, enqueue, job, settle


class CommitsContract(StoreFixtures):
    """Commits, batches, idempotency and cancels (part of ``StoreContract``)."""

    async def test_commit_and_lease_leases_what_the_commit_enqueued(self, backend: Backend) -> None:
        if not isinstance(backend, CommitAndLease):
            pytest.skip("this backend leases in a call of its own")
        await backend.commit([enqueue(job("a"), job("b"))], T0)
        leased = await backend.lease({"q": 30.0}, 10, T0)
        ack_a = Commit(
            settle("a", leased[0].token, Outcome.ACK), Effects(jobs=[job("next", "q2", at=T0 + 1)])
        )
        ack_b = Commit(settle("b", leased[1].token, Outcome.ACK))
        results, jobs = await backend.commit_and_lease([ack_a, ack_b], T0 + 1, {"q2": 30.0, "q": 30.0}, 5)
        assert [r.status for r in results] == [CommitStatus.OK, CommitStatus.OK]
        assert results[0].job_ids == ("next",)
        assert [(j.id, j.queue, j.attempt) for j in jobs] == [("next", "q2", 1)]
        assert jobs[0].lease_deadline == T0 + 31
        [done] = await backend.commit([Commit(settle("next", jobs[0].token, Outcome.ACK))], T0 + 2)
        assert done.status is CommitStatus.OK
        assert await backend.lease({"q": 30.0, "q2": 30.0}, 10, T0 + 100) == []

    async def test_commit_and_lease_takes_no_more_than_the_limit(self, backend: Backend) -> None:
        if not isinstance(backend, CommitAndLease):
            pytest.skip("this backend leases in a call of its own")
        more = Effects(jobs=[job(f"j{i}", at=T0 + i / 100) for i in range(5)])
        results, jobs = await backend.commit_and_lease([Commit(effects=more)], T0 + 1, {"q": 30.0}, 3)
        assert results[0].status is CommitStatus.OK
        assert [j.id for j in jobs] == ["j0", "j1", "j2"]
        assert [j.id for j in await backend.lease({"q": 30.0}, 10, T0 + 1)] == ["j3", "j4"]

    async def test_commit_and_lease_with_a_stale_commit_still_leases(self, backend: Backend) -> None:
        if not isinstance(backend, CommitAndLease):
            pytest.skip("this backend leases in a call of its own")
        await backend.commit([enqueue(job("a"), job("b", at=T0 + 1))], T0)
        [leased] = await backend.lease({"q": 30.0}, 1, T0)
        stale = Commit(settle("a", leased.token + 1000, Outcome.ACK), Effects(jobs=[job("effect", "q")]))
        [result], jobs = await backend.commit_and_lease([stale], T0 + 1, {"q": 30.0}, 5)
        assert result.status is CommitStatus.STALE
        assert [j.id for j in jobs] == ["b"]  # not the stale commit's effect, nor the leased "a"

    async def test_idempotent_enqueue_returns_first_id_while_job_exists_and_after_ack(
        self, backend: Backend
    ) -> None:
        [first] = await backend.commit([enqueue(job("a", key="order-42"))], T0)
        [second] = await backend.commit([enqueue(job("b", key="order-42"))], T0)
        [elsewhere] = await backend.commit([enqueue(job("c", "q2", key="order-42"))], T0)
        assert first.job_ids == ("a",) and second.job_ids == ("a",) and elsewhere.job_ids == ("c",)
        [leased] = await backend.lease({"q": 30.0}, 10, T0)
        assert leased.id == "a"
        await backend.commit([Commit(settle("a", leased.token, Outcome.ACK))], T0 + 1)
        [after_ack] = await backend.commit([enqueue(job("d", key="order-42"))], T0 + 2)
        assert after_ack.job_ids == ("a",)
        assert await backend.lease({"q": 30.0}, 10, T0 + 2) == []

    async def test_idempotency_key_is_free_again_after_retention(self, backend: Backend) -> None:
        retention = getattr(backend, "idempotency_retention", None)
        assert isinstance(retention, float | int), "backends expose idempotency_retention"
        await backend.commit([enqueue(job("a", key="k"))], T0)
        [leased] = await backend.lease({"q": 30.0}, 10, T0)
        await backend.commit([Commit(settle("a", leased.token, Outcome.ACK))], T0)
        [later] = await backend.commit([enqueue(job("b", key="k"))], T0 + retention + 1)
        assert later.job_ids == ("b",)

    async def test_commits_in_one_batch_are_independent(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a"), job("b"))], T0)
        a, b = await backend.lease({"q": 30.0}, 10, T0)
        results = await backend.commit(
            [
                Commit(settle(a.id, a.token + 1000, Outcome.ACK), Effects(jobs=[job("x", "out")])),
                Commit(settle(b.id, b.token, Outcome.ACK), Effects(jobs=[job("y", "out")])),
            ],
            T0 + 1,
        )
        assert [r.status for r in results] == [CommitStatus.STALE, CommitStatus.OK]
        assert [j.id for j in await backend.lease({"out": 30.0}, 10, T0 + 1)] == ["y"]

    async def test_enqueueing_an_existing_id_leaves_that_job_and_stores_the_others(
        self, backend: Backend
    ) -> None:
        # Met by a plain enqueue (no settlement, no key), an id already stored keeps its job as it
        # was (body and schedule), and the rest of the commit is stored all the same.
        await backend.commit([enqueue(job("a"))], T0)
        again = NewJob("a", "q", b'{"n": "again"}', T0 + 50, T0 + 50)
        [result] = await backend.commit([enqueue(again, job("b"))], T0)
        assert result.status is CommitStatus.OK
        assert result.job_ids == ("a", "b")
        leased = {j.id: j for j in await backend.lease({"q": 30.0}, 10, T0)}
        assert sorted(leased) == ["a", "b"]
        assert leased["a"].body == b'{"n": "a"}'

    async def test_enqueueing_an_existing_id_stays_a_no_op_when_the_batch_then_deletes_the_job(
        self, backend: Backend
    ) -> None:
        # A batch behaves as its commits applied in order: the second enqueue of "a" meets the
        # leased job and does nothing, so nothing brings "a" back after its ack or dead letter.
        await backend.commit([enqueue(job("a"), job("b"))], T0)
        a, b = await backend.lease({"q": 30.0}, 10, T0)
        results = await backend.commit(
            [
                enqueue(job("a", at=T0 + 1), job("b", at=T0 + 1)),
                Commit(settle(a.id, a.token, Outcome.ACK)),
                Commit(settle(b.id, b.token, Outcome.DEAD, error=ERR)),
            ],
            T0 + 1,
        )
        assert [r.status for r in results] == [CommitStatus.OK] * 3
        assert results[0].job_ids == ("a", "b")
        assert await backend.lease({"q": 30.0}, 10, T0 + 100) == []
        [stats] = await backend.stats(["q"], T0 + 100)
        assert (stats.ready, stats.scheduled, stats.leased, stats.dead) == (0, 0, 0, 1)

    async def test_cancel_deletes_a_pending_job_by_key_but_not_a_leased_one(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("timer", at=T0 + 60, key="t1"), job("busy", "q2", key="t2"))], T0)
        [busy] = await backend.lease({"q2": 30.0}, 10, T0)
        await backend.commit([Commit(effects=Effects(cancels=[("q", "t1"), ("q2", "t2")]))], T0)
        assert await backend.lease({"q": 30.0}, 10, T0 + 100) == []
        [ok] = await backend.commit([Commit(settle("busy", busy.token, Outcome.ACK))], T0 + 1)
        assert ok.status is CommitStatus.OK
        [reused] = await backend.commit([enqueue(job("timer2", key="t1"))], T0 + 1)
        assert reused.job_ids == ("timer2",)

    async def test_many_jobs_in_one_commit_keep_their_order(self, backend: Backend) -> None:
        jobs = [job(f"j{i:04d}") for i in range(500)]
        [result] = await backend.commit([enqueue(*jobs)], T0)
        assert result.job_ids == tuple(j.id for j in jobs)
        leased = await backend.lease({"q": 30.0}, 1000, T0)
        assert len(leased) == 500 and len({j.id for j in leased}) == 500
