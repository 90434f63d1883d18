"""The port-level contract: what every backend's storage must do, tested directly on the ports.

Use it from a test module by subclassing and providing a ``backend_url`` fixture that yields a URL
of an empty, isolated backend (a fresh SQLite file, a fresh Redis prefix, a fresh PostgreSQL schema)::

    class TestMyBackend(StoreContract):
        durable = True

        @pytest.fixture
        def backend_url(self, tmp_path):
            return f"sqlite:///{tmp_path}/test.db"
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from conveyor.backends import open_backend
from conveyor.ports import (
    Backend,
    Commit,
    CommitAndLease,
    CommitStatus,
    Effects,
    ErrorInfo,
    HistoryEntry,
    NewEvent,
    NewJob,
    Outcome,
    Settlement,
    StateOp,
    StateWrite,
)

T0 = 1_700_000_000.0


def job(job_id: str, queue: str = "q", *, at: float = T0, key: str | None = None) -> NewJob:
    return NewJob(job_id, queue, b'{"n": "%s"}' % job_id.encode(), at, at, key)


def enqueue(*jobs: NewJob) -> Commit:
    return Commit(effects=Effects(jobs=list(jobs)))


def settle(leased_id: str, token: int, outcome: Outcome, **kwargs: object) -> Settlement:
    return Settlement(leased_id, token, outcome, **kwargs)  # type: ignore[arg-type]


ERR = ErrorInfo("ValueError", "boom", "Traceback ...")


async def drain(backend: Backend, leased_ids: list[str], *, limit: int, queues: dict[str, float]) -> None:
    """Lease until nothing is left, acking every other batch (bounded): a worker racing others."""
    for batch in range(10_000):
        leased = await backend.lease(queues, limit, T0)
        if not leased:
            return
        leased_ids.extend(j.id for j in leased)
        if batch % 2:
            acks = [Commit(Settlement(j.id, j.token, Outcome.ACK)) for j in leased]
            results = await backend.commit(acks, T0)
            assert all(r.status is CommitStatus.OK for r in results)
        await asyncio.sleep(0)  # let the other instance in between batches
    raise AssertionError("the queue never ran dry")


class StoreContract:
    """Every backend passes these unchanged."""

    durable = False
    """Set True for backends whose data survive closing and reopening the same URL."""

    @pytest.fixture
    async def backend(self, backend_url: str) -> AsyncIterator[Backend]:
        store = open_backend(backend_url)
        await store.connect()
        try:
            yield store
        finally:
            await store.close()

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

    async def test_event_fans_out_to_every_subscribed_queue(self, backend: Backend) -> None:
        await backend.register_subscriptions([("placed", "reserve"), ("placed", "audit")])
        await backend.register_subscriptions([("placed", "reserve"), ("other", "x")])
        assert sorted(await backend.subscriptions()) == [
            ("other", "x"),
            ("placed", "audit"),
            ("placed", "reserve"),
        ]
        event = NewEvent("e1", "placed", b'{"e": 1}', T0)
        [result] = await backend.commit([Commit(effects=Effects(events=[event]))], T0)
        assert result.deliveries == 2
        leased = await backend.lease({"reserve": 30.0, "audit": 30.0}, 10, T0)
        assert sorted((j.queue, j.id, j.body) for j in leased) == [
            ("audit", "e1:audit", b'{"e": 1}'),
            ("reserve", "e1:reserve", b'{"e": 1}'),
        ]

    async def test_event_without_subscription_is_delivered_nowhere(self, backend: Backend) -> None:
        event = NewEvent("e1", "nobody_listens", b"{}", T0)
        [result] = await backend.commit([Commit(effects=Effects(events=[event]))], T0)
        assert result.status is CommitStatus.OK and result.deliveries == 0

    async def test_state_set_get_delete_with_versions(self, backend: Backend) -> None:
        await backend.commit([Commit(effects=Effects(states=[StateWrite("k", StateOp.SET, b"1")]))], T0)
        await backend.commit([Commit(effects=Effects(states=[StateWrite("k", StateOp.SET, b"2")]))], T0)
        states = await backend.get_states(["k", "missing"])
        assert list(states) == ["k"]
        assert (states["k"].value, states["k"].version) == (b"2", 2)
        await backend.commit([Commit(effects=Effects(states=[StateWrite("k", StateOp.DELETE)]))], T0)
        assert await backend.get_states(["k"]) == {}

    async def test_compare_and_set_conflict_applies_nothing_of_the_commit(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a"))], T0)
        [leased] = await backend.lease({"q": 30.0}, 10, T0)
        await backend.commit([Commit(effects=Effects(states=[StateWrite("k", StateOp.SET, b"v1")]))], T0)
        conflicting = Commit(
            settle("a", leased.token, Outcome.ACK),
            Effects(
                jobs=[job("effect", "out")],
                states=[StateWrite("k", StateOp.SET, b"v2", expected_version=0)],
            ),
        )
        [result] = await backend.commit([conflicting], T0 + 1)
        assert result.status is CommitStatus.CONFLICT
        assert (await backend.get_states(["k"]))["k"].value == b"v1"
        assert await backend.lease({"out": 30.0}, 10, T0 + 1) == []
        matching = Commit(
            settle("a", leased.token, Outcome.ACK),
            Effects(states=[StateWrite("k", StateOp.SET, b"v2", expected_version=1)]),
        )
        [ok] = await backend.commit([matching], T0 + 1)
        assert ok.status is CommitStatus.OK
        assert (await backend.get_states(["k"]))["k"].version == 2

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

    async def test_cancel_deletes_a_pending_job_by_key_but_not_a_leased_one(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("timer", at=T0 + 60, key="t1"), job("busy", "q2", key="t2"))], T0)
        [busy] = await backend.lease({"q2": 30.0}, 10, T0)
        await backend.commit([Commit(effects=Effects(cancels=[("q", "t1"), ("q2", "t2")]))], T0)
        assert await backend.lease({"q": 30.0}, 10, T0 + 100) == []
        [ok] = await backend.commit([Commit(settle("busy", busy.token, Outcome.ACK))], T0 + 1)
        assert ok.status is CommitStatus.OK
        [reused] = await backend.commit([enqueue(job("timer2", key="t1"))], T0 + 1)
        assert reused.job_ids == ("timer2",)

    async def test_history_is_appended_in_order_and_pruned(self, backend: Backend) -> None:
        entries = [
            HistoryEntry("wf-1", T0 + i, kind, "q", f"m{i}", 1, None)
            for i, kind in enumerate(["enqueued", "started", "succeeded"])
        ]
        await backend.commit([Commit(effects=Effects(history=entries[:2]))], T0)
        await backend.commit([Commit(effects=Effects(history=entries[2:]))], T0)
        history = await backend.history("wf-1")
        assert [e.kind for e in history] == ["enqueued", "started", "succeeded"]
        assert history[0] == entries[0]
        assert await backend.history("wf-2") == []
        assert await backend.prune_history(T0 + 1) == 1
        assert [e.kind for e in await backend.history("wf-1")] == ["started", "succeeded"]

    async def test_instances_are_listed_most_recently_started_first(self, backend: Backend) -> None:
        entries = [
            HistoryEntry("wf-a", T0, "enqueued", "q", "a1"),
            HistoryEntry("wf-b", T0 + 1, "enqueued", "q", "b1"),
            HistoryEntry("wf-a", T0 + 5, "succeeded", "q", "a1", 1),
            HistoryEntry("wf-c", T0 + 3, "enqueued", "q", "c1"),
        ]
        await backend.commit([Commit(effects=Effects(history=entries))], T0)
        found = await backend.instances()
        assert [(i.correlation_id, i.started_at, i.updated_at) for i in found] == [
            ("wf-c", T0 + 3, T0 + 3),
            ("wf-b", T0 + 1, T0 + 1),
            ("wf-a", T0, T0 + 5),
        ]
        assert [i.correlation_id for i in await backend.instances(limit=2)] == ["wf-c", "wf-b"]
        assert [i.correlation_id for i in await backend.instances(started_after=T0)] == ["wf-c", "wf-b"]

    async def test_many_jobs_in_one_commit_keep_their_order(self, backend: Backend) -> None:
        jobs = [job(f"j{i:04d}") for i in range(500)]
        [result] = await backend.commit([enqueue(*jobs)], T0)
        assert result.job_ids == tuple(j.id for j in jobs)
        leased = await backend.lease({"q": 30.0}, 1000, T0)
        assert len(leased) == 500 and len({j.id for j in leased}) == 500

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

    async def test_two_instances_leasing_at_once_never_get_the_same_job(self, backend_url: str) -> None:
        first = open_backend(backend_url)
        # memory:// is one process: its "second instance" is the same store
        second = first if not self.durable else open_backend(backend_url)
        await first.connect()
        if second is not first:
            await second.connect()
        try:
            await first.commit([enqueue(*(job(f"j{i:05d}") for i in range(2_000)))], T0)
            by_first: list[str] = []
            by_second: list[str] = []
            lease_for = {"q": 300.0}  # longer than the test: every lease stays valid
            await asyncio.gather(
                drain(first, by_first, limit=37, queues=lease_for),
                drain(second, by_second, limit=23, queues=lease_for),
            )
        finally:
            await first.close()
            if second is not first:
                await second.close()
        counts = Counter(by_first + by_second)
        assert len(counts) == 2_000 and set(counts.values()) == {1}
        assert by_first and by_second, "both instances took part"

    async def test_jobs_and_subscriptions_survive_reopening(self, backend_url: str) -> None:
        if not self.durable:
            pytest.skip("this backend keeps nothing across a reopen")
        first = open_backend(backend_url)
        await first.connect()
        await first.register_subscriptions([("placed", "reserve")])
        await first.commit([enqueue(job("a"))], T0)
        await first.close()
        second = open_backend(backend_url)
        await second.connect()
        try:
            assert await second.subscriptions() == [("placed", "reserve")]
            [leased] = await second.lease({"q": 30.0}, 10, T0)
            assert leased.id == "a"
        finally:
            await second.close()
