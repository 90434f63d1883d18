"""The operations port on Redis beyond the store contract: lanes come and go, pause and resume across
instances, the bounded dead-letter walk, the indexes that pruning keeps in step, corrupt keys."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from conveyor.backends.memory import MemoryBackend
from conveyor.backends.redis import RedisBackend
from conveyor.backends.redis import operations as redis_operations
from conveyor.model.errors import CommitRejectedError
from conveyor.ports import (
    Backend,
    Commit,
    DeadLetterFilter,
    ErrorInfo,
    HistoryEntry,
    JobState,
    NewJob,
    Outcome,
    Settlement,
)
from tests.helpers import LEASE, T0, enqueue, new_jobs


@pytest.fixture
async def client(url: str) -> AsyncIterator[Redis]:
    async with Redis.from_url(url.split("?", maxsplit=1)[0]) as redis:
        yield redis


def urgent(job_id: str, priority: int = 5, at: float = T0) -> NewJob:
    return NewJob(job_id, "q", b"{}", at, T0, priority=priority)


# lanes


async def test_an_emptied_lane_is_forgotten_and_named_again_by_its_next_job(
    backend: RedisBackend, client: Redis
) -> None:
    control = f"{backend.prefix}:{{q}}:control"
    await backend.commit(enqueue(urgent("a")), T0)
    assert await client.hgetall(control) == {b"5": b"1"}
    [a] = await backend.lease(LEASE, 1, T0)
    await backend.commit([Commit(Settlement(a.id, a.token, Outcome.ACK))], T0)
    assert await backend.lease(LEASE, 1, T0) == []  # finds lane 5 empty: forgets it
    assert await client.exists(control) == 0
    await backend.commit(enqueue(urgent("b"), *new_jobs(1)), T0)
    assert [j.id for j in await backend.lease(LEASE, 2, T0)] == ["b", "job-00000"]


async def test_an_expired_lease_is_due_again_in_its_own_lane(backend: RedisBackend) -> None:
    await backend.commit(enqueue(urgent("a"), *new_jobs(1)), T0)
    [a] = await backend.lease({"q": 10.0}, 1, T0)
    assert a.id == "a"
    # lane 5's expired lease comes before lane 0's older job
    [again] = await backend.lease({"q": 10.0}, 1, T0 + 11)
    assert (again.id, again.attempt) == ("a", 2)
    record = await backend.job("a", T0 + 12)
    assert record is not None and (record.state, record.priority) == (JobState.RUNNING, 5)


async def test_a_cancelled_job_leaves_its_lane(backend: RedisBackend) -> None:
    await backend.commit(enqueue(urgent("a", -3), urgent("b", 2, at=T0 + 50)), T0)
    assert sorted(await backend.cancel_jobs(["a", "b"], T0)) == ["a", "b"]
    [stats] = await backend.stats(["q"], T0)
    assert (stats.ready, stats.scheduled) == (0, 0)


async def test_a_queue_whose_control_hash_is_corrupt_is_skipped_and_takes_no_new_lane(
    backend: RedisBackend, client: Redis
) -> None:
    await backend.commit(enqueue(*new_jobs(1), NewJob("o", "other", b"{}", T0, T0)), T0)
    await client.set(f"{backend.prefix}:{{q}}:control", b"not a hash")
    assert [j.id for j in await backend.lease({"q": 30.0, "other": 30.0}, 10, T0)] == ["o"]
    with pytest.raises(CommitRejectedError, match="control"):
        await backend.commit(enqueue(urgent("u")), T0)


# pause


async def test_resume_wakes_an_idle_worker_of_another_instance(url: str) -> None:
    waiter, operator = RedisBackend(url), RedisBackend(url)
    await asyncio.gather(waiter.connect(), operator.connect())
    try:
        await operator.pause("q", T0)
        await operator.commit(enqueue(*new_jobs(1)), T0)
        await waiter.wait_for_jobs(["q"], 5.0)  # the first wait subscribes and returns at once
        assert await waiter.lease(LEASE, 10, T0) == []
        waiting = asyncio.create_task(waiter.wait_for_jobs(["q"], 30.0))
        await asyncio.sleep(0)
        assert not waiting.done()
        assert await operator.resume("q")
        await asyncio.wait_for(waiting, 10.0)
        assert len(await waiter.lease(LEASE, 10, T0)) == 1
    finally:
        await asyncio.gather(waiter.close(), operator.close())


# dead letters


async def dead_letters_of(backend: Backend) -> None:
    """Twelve dead letters in two queues, of two error types, several failed at the same time."""
    declined = ErrorInfo("shop.PaymentDeclined", "Card DECLINED", None)
    other = ErrorInfo("ValueError", "bad input", "tb")
    jobs = [NewJob(f"d{i:02}", "pay" if i % 3 else "ship", b"{}", T0, T0) for i in range(12)]
    await backend.commit(enqueue(*jobs), T0)
    leased = await backend.lease({"pay": 30.0, "ship": 30.0}, 12, T0)
    for i, job in enumerate(sorted(leased, key=lambda j: j.id)):
        error = declined if i % 2 else other
        settlement = Settlement(job.id, job.token, Outcome.DEAD, error=error)
        await backend.commit([Commit(settlement)], T0 + i // 4)  # four at each time


FILTERS = [
    DeadLetterFilter(),
    DeadLetterFilter(queue="pay"),
    DeadLetterFilter(error_type="PaymentDeclined"),
    DeadLetterFilter(text="declined", queue="ship"),
    DeadLetterFilter(since=T0 + 1, until=T0 + 2),
    DeadLetterFilter(text="nowhere"),
]


@pytest.mark.parametrize("where", FILTERS)
async def test_the_dead_letter_walk_gives_what_memory_gives_however_small_its_budget(
    backend: RedisBackend, where: DeadLetterFilter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_operations, "_FIND_BUDGET", 2)  # a cursor every two dead letters
    memory = MemoryBackend()
    await dead_letters_of(memory)
    await dead_letters_of(backend)

    async def pages(store: Backend) -> list[list[str]]:
        found, before = [], None
        while page := await store.find_dead_letters(where, limit=3, before=before):
            found.append([d.id for d in page])
            before = (page[-1].failed_at, page[-1].id)
        return found

    assert await pages(backend) == await pages(memory)
    assert await backend.count_dead_letters(where) == await memory.count_dead_letters(where)


# indexes kept in step


async def test_pruned_history_leaves_the_job_history_index_too(backend: RedisBackend, client: Redis) -> None:
    entries = [
        HistoryEntry("wf", T0, "enqueued", "q", "a"),
        HistoryEntry("wf", T0 + 10, "succeeded", "q", "a"),
    ]
    await backend.commit([Commit(effects=dataclasses.replace(enqueue()[0].effects, history=entries))], T0)
    assert await backend.prune_history(T0 + 5) == 1
    assert [e.kind for e in await backend.job_history("a")] == ["succeeded"]
    assert await client.lrange(f"{backend.prefix}:jobhistory:a", 0, -1) == [b"wf"]


async def test_pruning_every_count_forgets_a_queue_with_no_lease_left(
    backend: RedisBackend, client: Redis
) -> None:
    await backend.commit(enqueue(*new_jobs(2)), T0)
    a, b = await backend.lease(LEASE, 2, T0)
    await backend.commit([Commit(Settlement(a.id, a.token, Outcome.ACK))], T0)
    worked = f"{backend.prefix}:worked"
    assert await backend.prune_counts(T0 + 3600) == 1
    assert await client.smembers(worked) == {b"q"}  # b is still leased
    assert [x.job_id for x in await backend.leases(None)] == [b.id]
    await backend.commit([Commit(Settlement(b.id, b.token, Outcome.ACK))], T0)
    assert await backend.prune_counts(T0 + 3600) == 1
    assert await client.exists(worked) == 0


async def test_a_job_stored_before_operations_is_looked_up_and_leased(
    backend: RedisBackend, client: Redis
) -> None:
    # the fields a job hash had before priority, worker and extensions existed
    prefix = backend.prefix
    await client.hset(f"{prefix}:job:old", mapping={"q": "q", "b": b"{}", "e": repr(T0)})
    await client.zadd(f"{prefix}:{{q}}:jobs", {"old": T0})
    record = await backend.job("old", T0)
    assert record is not None and (record.state, record.priority, record.lease) == (JobState.READY, 0, None)
    [old] = await backend.lease(LEASE, 1, T0, "w1")
    [lease] = await backend.leases("q")
    assert (lease.job_id, lease.worker, lease.token) == ("old", "w1", old.token)
