"""The store contract's operations port (:mod:`conveyor.ports.operations`): priority, per-job lease,
pause, leases, counts, job lookup and cancel, the worker registry and dead-letter filters."""

from __future__ import annotations

import dataclasses

import pytest

from conveyor.ports import (
    Backend,
    Commit,
    DeadLetterFilter,
    ErrorInfo,
    HistoryEntry,
    JobState,
    MinuteCounts,
    NewJob,
    Outcome,
    WorkerInfo,
)
from conveyor.testing.store_contract.fixtures import ERR, T0, StoreFixtures, enqueue, job, settle

MINUTE = T0 - T0 % 60  # T0 falls inside a count bucket: MINUTE is that bucket's start


def ranked(job_id: str, priority: int, queue: str = "q", *, at: float = T0) -> NewJob:
    return dataclasses.replace(job(job_id, queue, at=at), priority=priority)


async def dead_letter(backend: Backend, queue: str, job_id: str, error: ErrorInfo, now: float) -> None:
    """Enqueue ``job_id`` and dead-letter it at ``now`` with ``error``."""
    await backend.commit([enqueue(job(job_id, queue, at=now))], now)
    [leased] = await backend.lease({queue: 30.0}, 1, now)
    await backend.commit([Commit(settle(leased.id, leased.token, Outcome.DEAD, error=error))], now)


class OperationsContract(StoreFixtures):
    """The operations port (part of ``StoreContract``)."""

    # priority and a job's own lease

    async def test_higher_priority_leases_first_then_oldest(self, backend: Backend) -> None:
        jobs = [ranked("low", -5, at=T0 - 30), ranked("old", 0, at=T0 - 20), ranked("new", 0, at=T0 - 10)]
        jobs += [ranked("high", 7), ranked("high-later", 7, at=T0 + 100)]
        await backend.commit([enqueue(*jobs)], T0)
        leased = await backend.lease({"q": 30.0}, 2, T0)
        assert [j.id for j in leased] == ["high", "old"]
        assert [j.id for j in await backend.lease({"q": 30.0}, 10, T0)] == ["new", "low"]

    async def test_priority_orders_across_queues_too(self, backend: Backend) -> None:
        await backend.commit([enqueue(ranked("a", 0, "q1", at=T0 - 10), ranked("b", 3, "q2"))], T0)
        assert [j.id for j in await backend.lease({"q1": 30.0, "q2": 30.0}, 2, T0)] == ["b", "a"]

    async def test_retried_job_keeps_its_priority(self, backend: Backend) -> None:
        await backend.commit([enqueue(ranked("vip", 5), ranked("plain", 0, at=T0 - 50))], T0)
        [vip] = await backend.lease({"q": 30.0}, 1, T0)
        retry = settle(vip.id, vip.token, Outcome.RETRY, available_at=T0 + 1, error=ERR)
        await backend.commit([Commit(retry)], T0)
        assert [j.id for j in await backend.lease({"q": 30.0}, 1, T0 + 2)] == ["vip"]

    async def test_a_job_with_its_own_lease_seconds_gets_that_deadline(self, backend: Backend) -> None:
        own = dataclasses.replace(job("long"), lease_seconds=600.0)
        await backend.commit([enqueue(own, job("plain", at=T0 + 1))], T0)
        by_id = {j.id: j for j in await backend.lease({"q": 30.0}, 10, T0 + 1)}
        assert by_id["long"].lease_deadline == pytest.approx(T0 + 601)
        assert by_id["plain"].lease_deadline == pytest.approx(T0 + 31)
        assert [j.id for j in await backend.lease({"q": 30.0}, 10, T0 + 40)] == ["plain"]

    # pause

    async def test_a_paused_queue_keeps_its_jobs_and_accepts_more_until_resumed(
        self, backend: Backend
    ) -> None:
        await backend.commit([enqueue(job("a"), job("other", "q2"))], T0)
        assert await backend.pause("q", T0) is True
        assert await backend.pause("q", T0 + 1) is False  # already paused: its time stays
        assert await backend.paused_queues() == {"q": pytest.approx(T0)}
        await backend.commit([enqueue(job("b"))], T0)
        assert [j.id for j in await backend.lease({"q": 30.0, "q2": 30.0}, 10, T0)] == ["other"]
        [q, q2] = await backend.stats(["q", "q2"], T0)
        assert (q.ready, q.paused, q2.paused) == (2, True, False)
        assert await backend.resume("q") is True
        assert await backend.resume("q") is False
        assert await backend.paused_queues() == {}
        assert sorted(j.id for j in await backend.lease({"q": 30.0}, 10, T0)) == ["a", "b"]

    async def test_a_paused_queue_is_skipped_by_commit_and_lease_too(self, backend: Backend) -> None:
        commit_and_lease = getattr(backend, "commit_and_lease", None)
        if commit_and_lease is None:
            pytest.skip("this backend has no commit_and_lease")
        await backend.pause("q", T0)
        _, leased = await commit_and_lease([enqueue(job("a"))], T0, {"q": 30.0}, 10)
        assert leased == []

    async def test_a_lease_held_when_its_queue_is_paused_still_commits(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a"))], T0)
        [leased] = await backend.lease({"q": 30.0}, 1, T0)
        await backend.pause("q", T0)
        assert await backend.extend(leased.id, leased.token, T0 + 60, T0 + 1)
        [result] = await backend.commit([Commit(settle(leased.id, leased.token, Outcome.ACK))], T0 + 2)
        assert result.status.value == "ok"

    # leases

    async def test_leases_list_worker_times_and_extensions_paged_by_id(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a"), job("b"), job("c"), job("d", "q2"), job("e"))], T0)
        await backend.lease({"q": 30.0}, 3, T0, "host:1:w1")
        await backend.lease({"q2": 30.0}, 1, T0 + 1, "host:2:w2")
        [a] = await backend.leases("q", limit=1)
        assert (a.job_id, a.queue, a.attempt, a.worker) == ("a", "q", 1, "host:1:w1")
        assert (a.leased_at, a.expires_at) == pytest.approx((T0, T0 + 30)) and a.extensions == 0
        assert await backend.extend("a", a.token, T0 + 90, T0 + 5)
        assert await backend.extend("a", a.token, T0 + 95, T0 + 6)
        [a] = await backend.leases("q", limit=1)
        assert a.expires_at == pytest.approx(T0 + 95) and a.extensions == 2
        assert [x.job_id for x in await backend.leases("q", limit=10, after="a")] == ["b", "c"]
        assert [x.job_id for x in await backend.leases(None, limit=10)] == ["a", "b", "c", "d"]
        [d] = await backend.leases("q2")
        assert d.worker == "host:2:w2" and d.leased_at == pytest.approx(T0 + 1)

    async def test_a_settled_job_leaves_the_leases(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a"), job("b"))], T0)
        a, b = await backend.lease({"q": 30.0}, 2, T0)
        await backend.commit(
            [
                Commit(settle(a.id, a.token, Outcome.ACK)),
                Commit(settle(b.id, b.token, Outcome.RETRY, available_at=T0 + 5, error=ERR)),
            ],
            T0 + 1,
        )
        assert await backend.leases(None) == []

    # counts

    async def test_settlements_are_counted_per_queue_and_minute(self, backend: Backend) -> None:
        await backend.commit([enqueue(*(job(f"j{i}") for i in range(5)), job("x", "q2"))], T0)
        a, b, c, d, e = await backend.lease({"q": 300.0}, 5, T0)
        [x] = await backend.lease({"q2": 300.0}, 5, T0)
        await backend.commit(
            [
                Commit(settle(a.id, a.token, Outcome.ACK)),
                Commit(settle(b.id, b.token, Outcome.ACK)),
                Commit(settle(c.id, c.token, Outcome.RETRY, available_at=T0 + 120, error=ERR)),
                Commit(settle(d.id, d.token, Outcome.RELEASE)),
                Commit(settle(x.id, x.token, Outcome.DEAD, error=ERR)),
                Commit(settle(a.id, a.token, Outcome.ACK)),  # stale now: not counted
            ],
            T0,
        )
        await backend.commit([Commit(settle(e.id, e.token, Outcome.DEAD, error=ERR))], T0 + 60)
        assert await backend.queue_counts(["q", "q2"], T0) == [
            MinuteCounts("q", MINUTE, 2, 1, 0),
            MinuteCounts("q", MINUTE + 60, 0, 0, 1),
            MinuteCounts("q2", MINUTE, 0, 0, 1),
        ]
        assert await backend.queue_counts(["q"], T0 + 60) == [MinuteCounts("q", MINUTE + 60, 0, 0, 1)]
        assert await backend.queue_counts(["none"], T0) == []
        assert await backend.prune_counts(MINUTE + 60) == 2
        assert await backend.queue_counts(["q", "q2"], 0) == [MinuteCounts("q", MINUTE + 60, 0, 0, 1)]

    # jobs

    async def test_job_lookup_tells_each_state(self, backend: Backend) -> None:
        keyed = dataclasses.replace(ranked("r", 4), idempotency_key="order-1")
        await backend.commit([enqueue(keyed, job("s", at=T0 + 50), job("x", "q2"))], T0)
        r = await backend.job("r", T0)
        assert r is not None
        assert (r.state, r.queue, r.attempts, r.priority, r.idempotency_key) == (
            JobState.READY,
            "q",
            0,
            4,
            "order-1",
        )
        assert (r.body, r.lease, r.last_error, r.cancel_requested) == (b'{"n": "r"}', None, None, False)
        assert r.enqueued_at == pytest.approx(T0)
        s = await backend.job("s", T0)
        assert s is not None and s.state is JobState.SCHEDULED and s.available_at == pytest.approx(T0 + 50)
        [leased] = await backend.lease({"q": 30.0}, 1, T0, "w1")
        running = await backend.job("r", T0 + 1)
        assert running is not None and running.state is JobState.RUNNING and running.attempts == 1
        assert running.lease is not None and running.lease.worker == "w1"
        expired = await backend.job("r", T0 + 31)
        assert expired is not None and expired.state is JobState.READY
        await backend.commit(
            [Commit(settle(leased.id, leased.token, Outcome.RETRY, available_at=T0 + 10, error=ERR))], T0 + 1
        )
        retrying = await backend.job("r", T0 + 2)
        assert retrying is not None and retrying.state is JobState.SCHEDULED and retrying.last_error == ERR
        [x] = await backend.lease({"q2": 30.0}, 1, T0)
        await backend.commit([Commit(settle(x.id, x.token, Outcome.DEAD, error=ERR))], T0 + 3)
        dead = await backend.job("x", T0 + 4)
        assert dead is not None and (dead.state, dead.last_error) == (JobState.DEAD, ERR)
        assert dead.failed_at == pytest.approx(T0 + 3)
        assert await backend.job("missing", T0) is None

    async def test_job_for_key_finds_the_holder_while_held_and_after_its_ack(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a", key="k1"))], T0)
        assert await backend.job_for_key("q", "k1", T0) == "a"
        assert await backend.job_for_key("other", "k1", T0) is None
        [a] = await backend.lease({"q": 30.0}, 1, T0)
        await backend.commit([Commit(settle(a.id, a.token, Outcome.ACK))], T0)
        assert await backend.job_for_key("q", "k1", T0 + 1) == "a"
        assert await backend.job_for_key("q", "nope", T0) is None

    async def test_job_history_lists_a_jobs_entries(self, backend: Backend) -> None:
        entries = [
            HistoryEntry("wf-1", T0, "enqueued", "q", "a"),
            HistoryEntry("wf-1", T0 + 1, "succeeded", "q", "b", 1),
            HistoryEntry("wf-1", T0 + 2, "retried", "q", "a", 1, '{"error": "x"}'),
        ]
        await backend.commit([Commit(effects=dataclasses.replace(enqueue().effects, history=entries))], T0)
        assert [(e.kind, e.attempt) for e in await backend.job_history("a")] == [
            ("enqueued", None),
            ("retried", 1),
        ]
        assert await backend.job_history("c") == []

    async def test_cancel_deletes_waiting_jobs_frees_keys_and_writes_history(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a", key="k"), job("b", at=T0 + 50), job("c"), job("d"))], T0)
        leased = await backend.lease({"q": 30.0}, 10, T0 + 1)
        c = next(j for j in leased if j.id == "c")
        assert sorted(j.id for j in leased) == ["a", "c", "d"]
        a = next(j for j in leased if j.id == "a")
        await backend.commit([Commit(settle(a.id, a.token, Outcome.RELEASE))], T0 + 1)
        notes = [HistoryEntry("wf", T0 + 2, "cancelled", "q", i) for i in ("a", "b", "c")]
        assert sorted(await backend.cancel_jobs(["a", "b", "c", "missing"], T0 + 2, notes)) == ["a", "b"]
        assert await backend.job("a", T0 + 2) is None and await backend.job("b", T0 + 2) is None
        assert [e.message_id for e in await backend.history("wf")] == ["a", "b"]
        assert await backend.job_for_key("q", "k", T0 + 2) is None  # freed: a new job may take it
        [result] = await backend.commit([enqueue(job("a2", key="k"))], T0 + 2)
        assert result.job_ids == ("a2",)
        # the running one stays, and an expired lease's job can be cancelled
        assert await backend.cancel_jobs(["c"], T0 + 3) == []
        assert await backend.cancel_jobs(["d"], T0 + 40) == ["d"]
        [ok] = await backend.commit([Commit(settle(c.id, c.token, Outcome.ACK))], T0 + 4)
        assert ok.status.value == "ok"

    async def test_a_requested_cancellation_is_seen_until_the_job_is_settled(self, backend: Backend) -> None:
        await backend.commit([enqueue(job("a"), job("b"))], T0)
        a, _ = await backend.lease({"q": 30.0}, 2, T0)
        assert await backend.request_cancel("a") is True
        assert await backend.request_cancel("missing") is False
        assert await backend.cancel_requests(["a", "b", "missing"]) == ["a"]
        record = await backend.job("a", T0)
        assert record is not None and record.cancel_requested
        await backend.commit([Commit(settle(a.id, a.token, Outcome.ACK))], T0 + 1)
        assert await backend.cancel_requests(["a"]) == []

    # workers

    async def test_workers_register_heartbeat_and_drop_out(self, backend: Backend) -> None:
        one = WorkerInfo("host:1:a", "host", 1, ("q", "q2"), 50, T0, T0, 0)
        two = WorkerInfo("host:2:b", "host", 2, ("q",), 8, T0, T0, 0)
        await backend.register_worker(one)
        await backend.register_worker(two)
        await backend.register_worker(dataclasses.replace(one, last_seen=T0 + 20, settled=42))
        assert await backend.workers(T0) == [dataclasses.replace(one, last_seen=T0 + 20, settled=42), two]
        assert [w.id for w in await backend.workers(T0 + 10)] == ["host:1:a"]
        assert [w.id for w in await backend.workers(T0)] == ["host:1:a"]  # two's record went
        await backend.unregister_worker("host:1:a")
        assert await backend.workers(0) == []

    # dead letters

    async def test_dead_letters_are_found_by_filter_newest_first_keyset_paged(self, backend: Backend) -> None:
        declined = ErrorInfo("shop.errors.PaymentDeclined", "Card DECLINED by bank", "tb")
        await dead_letter(backend, "pay", "p1", declined, T0 + 1)
        await dead_letter(backend, "pay", "p2", ERR, T0 + 2)
        await dead_letter(backend, "pay", "p3", declined, T0 + 3)
        await dead_letter(backend, "ship", "s1", declined, T0 + 4)

        async def ids(where: DeadLetterFilter, **kwargs: object) -> list[str]:
            return [d.id for d in await backend.find_dead_letters(where, **kwargs)]  # type: ignore[arg-type]

        assert await ids(DeadLetterFilter()) == ["s1", "p3", "p2", "p1"]
        assert await ids(DeadLetterFilter(queue="pay")) == ["p3", "p2", "p1"]
        assert await ids(DeadLetterFilter(error_type="PaymentDeclined")) == ["s1", "p3", "p1"]
        assert await ids(DeadLetterFilter(error_type="shop.errors.PaymentDeclined", queue="pay")) == [
            "p3",
            "p1",
        ]
        assert await ids(DeadLetterFilter(error_type="Declined")) == []  # the last dotted part, whole
        assert await ids(DeadLetterFilter(since=T0 + 2, until=T0 + 4)) == ["p3", "p2"]
        assert await ids(DeadLetterFilter(text="declined by")) == ["s1", "p3", "p1"]
        assert await ids(DeadLetterFilter(text="100%_")) == []  # no wildcard in the text
        assert await ids(DeadLetterFilter(), limit=2) == ["s1", "p3"]
        assert await ids(DeadLetterFilter(), limit=2, before=(T0 + 3, "p3")) == ["p2", "p1"]
        assert await backend.count_dead_letters(DeadLetterFilter(error_type="PaymentDeclined")) == 3
        assert await backend.count_dead_letters(DeadLetterFilter(queue="none")) == 0
        one = await backend.dead_letter("p2")
        assert one is not None and (one.error, one.queue) == (ERR, "pay")
        assert await backend.dead_letter("nope") is None

    async def test_dead_letters_failed_at_the_same_time_page_by_id(self, backend: Backend) -> None:
        for dead_id in ("a", "c", "b"):
            await dead_letter(backend, "q", dead_id, ERR, T0)
        first = await backend.find_dead_letters(DeadLetterFilter(), limit=2)
        assert [d.id for d in first] == ["c", "b"]
        rest = await backend.find_dead_letters(DeadLetterFilter(), before=(first[-1].failed_at, first[-1].id))
        assert [d.id for d in rest] == ["a"]

    async def test_redrive_with_a_delay(self, backend: Backend) -> None:
        await dead_letter(backend, "q", "a", ERR, T0)
        assert await backend.redrive(["a"], T0 + 1, available_at=T0 + 100) == 1
        assert await backend.lease({"q": 30.0}, 1, T0 + 99) == []
        [again] = await backend.lease({"q": 30.0}, 1, T0 + 100)
        assert (again.id, again.attempt) == ("a", 1)
