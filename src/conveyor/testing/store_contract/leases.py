"""The store contract's leases: leased once while valid, again when expired, fenced by token;
ack, retry, release, delay and extend."""

from __future__ import annotations

import pytest

from conveyor.ports import Backend, Commit, CommitStatus, Effects, Outcome
from conveyor.testing.store_contract.fixtures import ERR, T0, StoreFixtures, enqueue, job, settle


class LeasesContract(StoreFixtures):
    """Leases and settlements (part of ``StoreContract``)."""

    async def test_enqueued_job_is_leased_with_attempt_token_and_deadline(self, backend: Backend) -> None:
        [result] = await backend.commit([enqueue(job("a"))], T0)
        assert result.status is CommitStatus.OK and result.job_ids == ("a",)
        [leased] = await backend.lease({"q": 30.0}, 10, T0)
        assert (leased.id, leased.queue, leased.attempt) == ("a", "q", 1)
        assert leased.body == b'{"n": "a"}'
        assert leased.lease_deadline == pytest.approx(T0 + 30)
        assert leased.enqueued_at == pytest.approx(T0)

    async def test_leased_job_is_not_leased_again_while_lease_is_valid(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a"))], T0)
        assert len(await backend.lease({"q": 30.0}, 10, T0)) == 1
        assert await backend.lease({"q": 30.0}, 10, T0 + 29) == []

    async def test_expired_lease_is_leased_again_with_new_token(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a"))], T0)
        [first] = await backend.lease({"q": 30.0}, 10, T0)
        [second] = await backend.lease({"q": 30.0}, 10, T0 + 31)
        assert second.id == "a" and second.attempt == 2 and second.token > first.token

    async def test_stale_token_is_rejected_and_its_effects_discarded(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a"))], T0)
        [first] = await backend.lease({"q": 30.0}, 10, T0)
        [second] = await backend.lease({"q": 30.0}, 10, T0 + 31)
        stale = Commit(
            settle("a", first.token, Outcome.ACK),
            Effects(jobs=[job("effect", "out", at=T0 + 31)]),
        )
        [result] = await backend.commit([stale], T0 + 32)
        assert result.status is CommitStatus.STALE
        assert await backend.lease({"out": 30.0}, 10, T0 + 32) == []
        assert not await backend.extend("a", first.token, T0 + 100, T0 + 32)
        [ok] = await backend.commit([Commit(settle("a", second.token, Outcome.ACK))], T0 + 33)
        assert ok.status is CommitStatus.OK

    async def test_expired_lease_cannot_commit_even_before_another_worker_leases(
        self, backend: Backend
    ) -> None:
        await backend.commit([enqueue(job("a"))], T0)
        [leased] = await backend.lease({"q": 30.0}, 10, T0)
        [result] = await backend.commit([Commit(settle("a", leased.token, Outcome.ACK))], T0 + 31)
        assert result.status is CommitStatus.STALE
        [again] = await backend.lease({"q": 30.0}, 10, T0 + 31)
        assert again.id == "a"

    async def test_ack_deletes_the_job(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a"))], T0)
        [leased] = await backend.lease({"q": 30.0}, 10, T0)
        await backend.commit([Commit(settle("a", leased.token, Outcome.ACK))], T0 + 1)
        assert await backend.lease({"q": 30.0}, 10, T0 + 1000) == []

    async def test_extending_to_the_same_deadline_leases_the_job_once_later(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a"))], T0)
        [leased] = await backend.lease({"q": 30.0}, 10, T0)
        assert await backend.extend("a", leased.token, T0 + 30, T0 + 1)
        assert await backend.extend("a", leased.token, T0 + 30, T0 + 2)
        again = await backend.lease({"q": 30.0}, 10, T0 + 31)
        assert [(j.id, j.attempt) for j in again] == [("a", 2)]

    async def test_delayed_job_is_leased_only_when_available(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("later", at=T0 + 60))], T0)
        assert await backend.lease({"q": 30.0}, 10, T0 + 59) == []
        [leased] = await backend.lease({"q": 30.0}, 10, T0 + 60)
        assert leased.id == "later"

    async def test_lease_takes_oldest_first_across_queues_up_to_limit(self, backend: Backend) -> None:
        await backend.commit(
            [
                enqueue(
                    job("q1-late", "q1", at=T0 + 3),
                    job("q2-early", "q2", at=T0 + 1),
                    job("q1-mid", "q1", at=T0 + 2),
                    job("other", "q3", at=T0),
                )
            ],
            T0,
        )
        leased = await backend.lease({"q1": 30.0, "q2": 10.0}, 2, T0 + 5)
        assert [j.id for j in leased] == ["q2-early", "q1-mid"]
        assert {j.id: j.lease_deadline for j in leased} == pytest.approx(
            {"q2-early": T0 + 15, "q1-mid": T0 + 35}
        )
        rest = await backend.lease({"q1": 30.0, "q2": 10.0}, 10, T0 + 5)
        assert [j.id for j in rest] == ["q1-late"]

    async def test_lease_takes_the_oldest_across_queues_with_a_backlog(self, backend: Backend) -> None:
        await backend.commit([enqueue(*(job(f"new{i}", "q0", at=T0 + 10 + i) for i in range(50)))], T0)
        await backend.commit([enqueue(job("old", "q1", at=T0 + 1))], T0)
        [first] = await backend.lease({"q0": 30.0, "q1": 30.0}, 1, T0 + 100)
        assert first.id == "old"

    async def test_retry_makes_job_available_later_and_keeps_attempts(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a"))], T0)
        [leased] = await backend.lease({"q": 30.0}, 10, T0)
        retry = settle("a", leased.token, Outcome.RETRY, available_at=T0 + 10, error=ERR)
        [result] = await backend.commit([Commit(retry)], T0 + 1)
        assert result.status is CommitStatus.OK
        assert await backend.lease({"q": 30.0}, 10, T0 + 9) == []
        [again] = await backend.lease({"q": 30.0}, 10, T0 + 10)
        assert again.attempt == 2

    async def test_release_gives_the_attempt_back(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a"))], T0)
        [leased] = await backend.lease({"q": 30.0}, 10, T0)
        await backend.commit([Commit(settle("a", leased.token, Outcome.RELEASE))], T0 + 1)
        [again] = await backend.lease({"q": 30.0}, 10, T0 + 1)
        assert again.attempt == 1 and again.token != leased.token

    async def test_extend_never_moves_the_deadline_earlier(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a"))], T0)
        [leased] = await backend.lease({"q": 30.0}, 10, T0)
        # a handler asking for 5 more seconds of a 30-second lease keeps the 30 seconds
        assert await backend.extend("a", leased.token, T0 + 5, T0 + 1)
        assert await backend.lease({"q": 30.0}, 10, T0 + 29) == []
        [ok] = await backend.commit([Commit(settle("a", leased.token, Outcome.ACK))], T0 + 29)
        assert ok.status is CommitStatus.OK

    async def test_extend_moves_the_deadline(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a"))], T0)
        [leased] = await backend.lease({"q": 30.0}, 10, T0)
        assert await backend.extend("a", leased.token, T0 + 100, T0 + 20)
        assert await backend.lease({"q": 30.0}, 10, T0 + 50) == []
        [ok] = await backend.commit([Commit(settle("a", leased.token, Outcome.ACK))], T0 + 99)
        assert ok.status is CommitStatus.OK
