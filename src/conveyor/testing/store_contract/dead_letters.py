"""The store contract's dead letters and counts: dead letters listed, redriven and purged; stats
and the names of the queues holding anything."""

from __future__ import annotations

import pytest

from conveyor.ports import Backend, Commit, CommitStatus, Outcome
from conveyor.testing.store_contract.fixtures import ERR, T0, StoreFixtures, enqueue, job, settle


class DeadLettersContract(StoreFixtures):
    """Dead letters, stats and queue names (part of ``StoreContract``)."""

    async def test_dead_letter_keeps_error_and_attempts_then_redrive_and_purge(
        self, backend: Backend
    ) -> None:
        await backend.commit([enqueue(job("a"), job("b"))], T0)
        leased = await backend.lease({"q": 30.0}, 10, T0)
        await backend.commit([Commit(settle(j.id, j.token, Outcome.DEAD, error=ERR)) for j in leased], T0 + 2)
        dead = await backend.dead_letters("q")
        assert [d.id for d in dead] == ["a", "b"]
        assert dead[0].error == ERR and dead[0].attempts == 1
        assert dead[0].failed_at == pytest.approx(T0 + 2)
        assert dead[0].enqueued_at == pytest.approx(T0)
        assert dead[0].body == b'{"n": "a"}'
        assert await backend.dead_letters("other") == []
        assert await backend.lease({"q": 30.0}, 10, T0 + 1000) == []
        assert await backend.redrive(["a", "missing"], T0 + 3) == 1
        [redriven] = await backend.lease({"q": 30.0}, 10, T0 + 3)
        assert redriven.id == "a" and redriven.attempt == 1
        assert await backend.purge(["b"]) == 1
        assert await backend.dead_letters(None) == []

    async def test_redrive_leaves_a_dead_letter_whose_id_a_live_job_holds(self, backend: Backend) -> None:
        # the same event delivered again after its first delivery was dead-lettered
        await backend.commit([enqueue(job("a"), job("b"))], T0)
        leased = await backend.lease({"q": 30.0}, 10, T0)
        await backend.commit([Commit(settle(j.id, j.token, Outcome.DEAD, error=ERR)) for j in leased], T0)
        await backend.commit([enqueue(job("a", at=T0 + 1))], T0 + 1)
        [live] = await backend.lease({"q": 30.0}, 10, T0 + 1)
        assert await backend.redrive(["a", "b"], T0 + 2) == 1
        assert [d.id for d in await backend.dead_letters("q")] == ["a"]
        # the live lease is untouched: not leased again, and its ack still counts
        assert [j.id for j in await backend.lease({"q": 30.0}, 10, T0 + 2)] == ["b"]
        [ok] = await backend.commit([Commit(settle("a", live.token, Outcome.ACK))], T0 + 3)
        assert ok.status is CommitStatus.OK

    async def test_purge_all_of_a_queue(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a"), job("b", "q2"))], T0)
        leased = await backend.lease({"q": 30.0, "q2": 30.0}, 10, T0)
        await backend.commit([Commit(settle(j.id, j.token, Outcome.DEAD, error=ERR)) for j in leased], T0 + 1)
        assert await backend.purge(None, queue="q") == 1
        assert [d.id for d in await backend.dead_letters(None)] == ["b"]

    async def test_stats_count_ready_scheduled_leased_and_dead(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a"), job("b"), job("c", at=T0 + 50), job("d"))], T0)
        a, _ = await backend.lease({"q": 30.0}, 2, T0)
        await backend.commit([Commit(settle(a.id, a.token, Outcome.DEAD, error=ERR))], T0)
        [stats] = await backend.stats(["q"], T0)
        assert (stats.ready, stats.scheduled, stats.leased, stats.dead) == (1, 1, 1, 1)
        assert stats.oldest_ready_at == pytest.approx(T0)

    async def test_queue_names_lists_every_queue_holding_jobs_or_dead_letters(self, backend: Backend) -> None:
        assert await backend.queue_names() == []
        jobs = [job("r", "ready"), job("s", "billing.later", at=T0 + 50), job("l", "leased")]
        await backend.commit([enqueue(*jobs, job("d", "dead"), job("g", "gone"))], T0)
        leased = await backend.lease({"leased": 30.0, "dead": 30.0, "gone": 30.0}, 10, T0)
        by_queue = {j.queue: j for j in leased}
        dead, gone = by_queue["dead"], by_queue["gone"]
        await backend.commit(
            [
                Commit(settle(dead.id, dead.token, Outcome.DEAD, error=ERR)),
                Commit(settle(gone.id, gone.token, Outcome.ACK)),
            ],
            T0,
        )
        assert await backend.queue_names() == ["billing.later", "dead", "leased", "ready"]
