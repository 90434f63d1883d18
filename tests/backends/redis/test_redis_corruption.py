"""A key of the wrong type (or a malformed value) inside the Redis prefix costs at most its own job.

Each test writes one corrupt key where the backend keeps a job hash, a queue's sorted set, an
idempotency key, a state hash, a history list or a dead-letter index, then checks that leasing and
committing go on for everything else: a corrupt job hash is dead-lettered by the lease that meets
it, a corrupt queue set is skipped with an error naming it, and a commit batch in which one commit
needs a corrupt key applies nothing at all and names the key (the runtime then splits the batch).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from conveyor import App, Context, Lifecycle, Service, WorkerConfig
from conveyor.backends.redis import RedisBackend
from conveyor.model.errors import BackendError
from conveyor.ports import (
    Commit,
    CommitStatus,
    Effects,
    ErrorInfo,
    HistoryEntry,
    LeasedJob,
    NewEvent,
    NewJob,
    Outcome,
    Settlement,
    StateOp,
    StateWrite,
)
from conveyor.testing import running, wait_until
from tests.helpers import T0

LEASE = {"q": 300.0, "other": 300.0}


@pytest.fixture
async def client(url: str) -> AsyncIterator[Redis]:
    async with Redis.from_url(url.split("?", maxsplit=1)[0]) as redis:
        yield redis


async def corrupt(client: Redis, key: str, kind: str = "string") -> None:
    """Replace ``key`` with a value of type ``kind``."""
    await client.delete(key)
    if kind == "string":
        await client.set(key, b"not what belongs here")
    elif kind == "list":
        await client.rpush(key, b"a", b"b")
    elif kind == "hash":
        await client.hset(key, "f", "v")
    else:
        raise ValueError(kind)


async def snapshot(client: Redis, prefix: str) -> dict[bytes, bytes | None]:
    """Every key of ``prefix`` and its serialized value: equal snapshots mean nothing was written."""
    keys = sorted([key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)])
    return {key: await client.dump(key) for key in keys}


async def enqueue(backend: RedisBackend, queue: str, *ids: str) -> None:
    jobs = [NewJob(job_id, queue, b'{"id": "%s"}' % job_id.encode(), T0, T0) for job_id in ids]
    [result] = await backend.commit([Commit(effects=Effects(jobs=jobs))], T0)
    assert result.status is CommitStatus.OK


# leasing


@pytest.mark.parametrize("kind", ["string", "list"])
async def test_a_job_key_of_the_wrong_type_is_dead_lettered_and_the_rest_is_leased(
    backend: RedisBackend, client: Redis, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = backend.prefix
    await enqueue(backend, "q", "a", "b", "c")
    await enqueue(backend, "other", "d")
    await corrupt(client, f"{prefix}:job:b", kind)
    with caplog.at_level(logging.ERROR, logger="conveyor.backends.redis"):
        leased = await backend.lease(LEASE, 10, T0)
    assert sorted(job.id for job in leased) == ["a", "c", "d"]
    [dead] = await backend.dead_letters("q")
    assert (dead.id, dead.queue, dead.error.type) == ("b", "q", "conveyor.model.errors.BackendError")
    assert f"{prefix}:job:b holds a {kind}, not a job hash" in dead.error.message
    assert f"{prefix}:job:b holds a {kind}" in caplog.text
    if kind == "string":  # the value is kept as the dead letter's body
        assert dead.body == b"not what belongs here"
        assert not await client.exists(f"{prefix}:job:b")
    else:  # the key is kept aside, untouched
        assert f"{prefix}:corrupt:job:b" in dead.error.message
        assert await client.lrange(f"{prefix}:corrupt:job:b", 0, -1) == [b"a", b"b"]
    assert await backend.lease(LEASE, 10, T0 + 1) == []  # nothing left behind to trip over
    assert [s.dead for s in await backend.stats(["q"], T0)] == [1]


@pytest.mark.parametrize("suffix", ["jobs", "leased"])
async def test_a_queue_set_of_the_wrong_type_is_skipped_and_other_queues_are_leased(
    backend: RedisBackend, client: Redis, suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = backend.prefix
    await enqueue(backend, "q", "a")
    await enqueue(backend, "other", "d")
    key = f"{prefix}:{{q}}:{suffix}"
    await corrupt(client, key)
    with caplog.at_level(logging.ERROR, logger="conveyor.backends.redis"):
        leased = await backend.lease(LEASE, 10, T0)
    assert [job.id for job in leased] == ["d"]
    assert f"{key} holds a string, not a sorted set: queue 'q' is skipped" in caplog.text
    # the job of the skipped queue is still there, leased once its set is repaired
    await client.delete(key)
    if suffix == "jobs":
        await client.zadd(key, {"a": T0})
    [again] = await backend.lease(LEASE, 10, T0)
    assert (again.id, again.attempt) == ("a", 1)


async def test_a_job_hash_without_its_body_is_dead_lettered_naming_the_key(
    backend: RedisBackend, client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = backend.prefix
    await enqueue(backend, "q", "a", "b", "c")
    await client.hdel(f"{prefix}:job:b", "b")
    with caplog.at_level(logging.ERROR, logger="conveyor.backends.redis"):
        leased = await backend.lease(LEASE, 10, T0)
    assert [job.id for job in leased] == ["a", "c"]
    [dead] = await backend.dead_letters("q")
    assert (dead.id, dead.queue, dead.body) == ("b", "q", b"")
    assert f"{prefix}:job:b has no field b (the body)" in dead.error.message
    assert f"{prefix}:job:b has no field b" in caplog.text
    # the hash is kept aside, untouched, and nothing is left behind to trip over
    assert await client.hgetall(f"{prefix}:corrupt:job:b") == {b"q": b"q", b"e": b"%r" % T0}
    assert not await client.exists(f"{prefix}:job:b")
    assert await backend.lease(LEASE, 10, T0 + 1) == []


async def test_a_member_without_its_job_hash_is_dropped(backend: RedisBackend, client: Redis) -> None:
    await enqueue(backend, "q", "a", "b")
    await client.delete(f"{backend.prefix}:job:a")
    assert [job.id for job in await backend.lease(LEASE, 10, T0)] == ["b"]
    assert await backend.dead_letters("q") == []
    assert [(s.ready, s.leased) for s in await backend.stats(["q"], T0)] == [(0, 1)]


async def test_a_job_hash_without_enqueued_at_is_leased_all_the_same(
    backend: RedisBackend, client: Redis
) -> None:
    await enqueue(backend, "q", "a", "b", "c")
    await client.hdel(f"{backend.prefix}:job:a", "e")
    await client.hset(f"{backend.prefix}:job:b", "e", "yesterday")
    leased = await backend.lease(LEASE, 10, T0 + 5)
    assert [(job.id, job.enqueued_at) for job in leased] == [("a", T0 + 5), ("b", T0 + 5), ("c", T0)]


async def test_a_corrupt_token_counter_is_an_error_naming_it(backend: RedisBackend, client: Redis) -> None:
    await enqueue(backend, "q", "a")
    await client.set(f"{backend.prefix}:token", "many")
    with pytest.raises(BackendError, match=f"{backend.prefix}:token"):
        await backend.lease(LEASE, 10, T0)
    await client.set(f"{backend.prefix}:token", 1000)
    [job] = await backend.lease(LEASE, 10, T0)
    assert job.token > 1000


async def test_a_key_that_is_not_utf8_does_not_break_listing_the_queues(
    backend: RedisBackend, client: Redis
) -> None:
    await enqueue(backend, "q", "a")
    await client.zadd(backend.prefix.encode() + b":{\xff\xfe}:jobs", {b"x": T0})
    names = await backend.queue_names()
    assert names == ["\\xff\\xfe", "q"]
    assert [s.ready for s in await backend.stats(names, T0)] == [0, 1]  # what health and metrics read


# committing


@dataclass(frozen=True)
class Corruption:
    """One corrupt key and the commit that needs it."""

    name: str
    key: str
    """the corrupt key, after the prefix"""
    setup: Callable[[Redis, str], Awaitable[None]]
    commit: Callable[[LeasedJob], Commit]
    queue: str = "q"
    """the queue the culprit job is leased from"""


def _ack(job: LeasedJob, effects: Effects | None = None) -> Commit:
    return Commit(Settlement(job.id, job.token, Outcome.ACK), effects or Effects())


def _set(key: str, kind: str = "string") -> Callable[[Redis, str], Awaitable[None]]:
    async def setup(client: Redis, prefix: str) -> None:
        await corrupt(client, f"{prefix}:{key}", kind)

    return setup


def _value(key: str, value: bytes) -> Callable[[Redis, str], Awaitable[None]]:
    async def setup(client: Redis, prefix: str) -> None:
        await client.set(f"{prefix}:{key}", value)

    return setup


async def _bad_version(client: Redis, prefix: str) -> None:
    await client.hset(f"{prefix}:state:bad", mapping={"v": b"1", "n": b"one"})


async def _held_by_corrupt_job(client: Redis, prefix: str) -> None:
    await client.set(f"{prefix}:{{next}}:idem:k", b"- held")
    await client.set(f"{prefix}:job:held", b"not a hash")


_KEYED = NewJob("new", "next", b"{}", T0, T0, "k")
_DEAD = ErrorInfo("E", "failed")
CORRUPTIONS = [
    Corruption(
        "state key",
        "state:bad",
        _set("state:bad"),
        lambda j: _ack(j, Effects(states=[StateWrite("bad", StateOp.SET, b"1")])),
    ),
    Corruption(
        "state version",
        "state:bad",
        _bad_version,
        lambda j: _ack(j, Effects(states=[StateWrite("bad", StateOp.SET, b"1")])),
    ),
    Corruption(
        "versioned delete",
        "state:bad",
        _set("state:bad", "list"),
        lambda j: _ack(j, Effects(states=[StateWrite("bad", StateOp.DELETE, expected_version=1)])),
    ),
    Corruption(
        "idempotency key type",
        "{next}:idem:k",
        _set("{next}:idem:k", "hash"),
        lambda j: _ack(j, Effects(jobs=[_KEYED])),
    ),
    Corruption(
        "idempotency value",
        "{next}:idem:k",
        _value("{next}:idem:k", b"garbage"),
        lambda j: _ack(j, Effects(jobs=[_KEYED])),
    ),
    Corruption(
        "idempotency expiry",
        "{next}:idem:k",
        _value("{next}:idem:k", b"soon x"),
        lambda j: _ack(j, Effects(jobs=[_KEYED])),
    ),
    Corruption(
        "cancelled key",
        "{next}:idem:k",
        _value("{next}:idem:k", b"garbage"),
        lambda j: _ack(j, Effects(cancels=[("next", "k")])),
    ),
    Corruption(
        "cancelled job", "job:held", _held_by_corrupt_job, lambda j: _ack(j, Effects(cancels=[("next", "k")]))
    ),
    Corruption(
        "target queue",
        "{elsewhere}:jobs",
        _set("{elsewhere}:jobs"),
        lambda j: _ack(j, Effects(jobs=[NewJob("new", "elsewhere", b"{}", T0, T0)])),
    ),
    Corruption(
        "subscription",
        "sub:flagged",
        _set("sub:flagged"),
        lambda j: _ack(j, Effects(events=[NewEvent("e", "flagged", b"{}", T0)])),
    ),
    Corruption("settled job", "job:culprit", _set("job:culprit"), _ack),
    Corruption("leased set", "{other}:leased", _set("{other}:leased"), _ack, queue="other"),
    Corruption(
        "retry target",
        "{other}:jobs",
        _set("{other}:jobs", "list"),
        lambda j: Commit(Settlement(j.id, j.token, Outcome.RETRY, T0 + 10, _DEAD)),
        queue="other",
    ),
]


def good_commits(leased: list[LeasedJob]) -> list[Commit]:
    """Acks whose effects touch every kind of key: a state, a new job, a history entry, an event."""
    return [
        _ack(
            job,
            Effects(
                states=[StateWrite(f"s:{job.id}", StateOp.SET, b"1")],
                jobs=[NewJob(f"next-{job.id}", "next", b"{}", T0, T0, f"key-{job.id}")],
                history=[HistoryEntry(f"c-{job.id}", T0, "succeeded", "q", job.id, 1)],
                events=[NewEvent(f"e-{job.id}", "placed", b"{}", T0)],
            ),
        )
        for job in leased
    ]


@pytest.mark.parametrize("case", CORRUPTIONS, ids=[case.name for case in CORRUPTIONS])
async def test_a_commit_needing_a_corrupt_key_applies_nothing_and_names_the_key(
    backend: RedisBackend, client: Redis, case: Corruption
) -> None:
    prefix = backend.prefix
    await backend.register_subscriptions([("placed", "subscriber")])
    await enqueue(backend, "q", "good-0", "good-1", "good-2", "good-3")
    await enqueue(backend, case.queue, "culprit")
    leased = {job.id: job for job in await backend.lease(LEASE, 10, T0)}
    culprit = leased.pop("culprit")
    await case.setup(client, prefix)
    good = good_commits(sorted(leased.values(), key=lambda job: job.id))
    batch = [*good[:2], case.commit(culprit), *good[2:]]
    before = await snapshot(client, prefix)

    with pytest.raises(BackendError, match=f"{prefix}:{case.key}".replace("{", r"\{").replace("}", r"\}")):
        await backend.commit(batch, T0)
    assert await snapshot(client, prefix) == before, "a rejected batch wrote something"

    # the runtime splits the batch: every other commit applies, exactly once
    assert {r.status for r in await backend.commit(good, T0)} == {CommitStatus.OK}
    with pytest.raises(BackendError, match="nothing was applied"):
        await backend.commit(batch, T0)  # a retry of the whole batch
    assert {r.status for r in await backend.commit(good, T0)} == {CommitStatus.STALE}
    states = await backend.get_states([f"s:{job_id}" for job_id in leased])
    assert {key: record.version for key, record in states.items()} == {f"s:{job_id}": 1 for job_id in leased}
    next_jobs = await backend.lease({"next": 60.0, "subscriber": 60.0}, 100, T0)
    expected = [f"{kind}-{job_id}" for job_id in leased for kind in ("next", "e")]
    assert sorted(job.id.removesuffix(":subscriber") for job in next_jobs) == sorted(expected)


@pytest.mark.parametrize("key", ["history:c-0", "history"])
async def test_a_history_key_of_the_wrong_type_is_moved_aside_and_the_commit_applies(
    backend: RedisBackend, client: Redis, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """History is a record nothing depends on: no check per entry, a bad key is set aside."""
    prefix = backend.prefix
    await corrupt(client, f"{prefix}:{key}", "hash")
    entries = [HistoryEntry(f"c-{n}", T0 + n, "succeeded", "q", f"job-{n}", 1) for n in range(3)]
    with caplog.at_level(logging.ERROR, logger="conveyor.backends.redis"):
        [result] = await backend.commit([Commit(effects=Effects(history=entries))], T0)
    assert result.status is CommitStatus.OK
    assert [entry.message_id for entry in await backend.history("c-0")] == ["job-0"]
    assert [i.correlation_id for i in await backend.instances()] == ["c-2", "c-1", "c-0"]
    assert await client.hgetall(f"{prefix}:corrupt:{key}") == {b"f": b"v"}
    assert f"{prefix}:{key} holds a hash" in caplog.text and f"{prefix}:corrupt:{key}" in caplog.text


@pytest.mark.parametrize("index", ["{q}:dead", "dead"])
async def test_a_dead_letter_index_of_the_wrong_type_is_moved_aside_and_the_job_dead_lettered(
    backend: RedisBackend, client: Redis, index: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An index only lists dead letters: rejecting the settlement for it would loop the job forever."""
    prefix = backend.prefix
    await enqueue(backend, "q", "good", "culprit")
    leased = {job.id: job for job in await backend.lease(LEASE, 10, T0)}
    await corrupt(client, f"{prefix}:{index}", "list")
    batch = [
        _ack(leased["good"], Effects(states=[StateWrite("s", StateOp.SET, b"1")])),
        Commit(Settlement("culprit", leased["culprit"].token, Outcome.DEAD, error=_DEAD)),
    ]
    with caplog.at_level(logging.ERROR, logger="conveyor.backends.redis"):
        results = await backend.commit(batch, T0)
    assert [r.status for r in results] == [CommitStatus.OK, CommitStatus.OK]
    assert [(d.id, d.error.message) for d in await backend.dead_letters("q")] == [("culprit", "failed")]
    assert [d.id for d in await backend.dead_letters(None)] == ["culprit"]
    assert await client.lrange(f"{prefix}:corrupt:{index}", 0, -1) == [b"a", b"b"]
    assert f"{prefix}:{index} holds a list" in caplog.text and f"{prefix}:corrupt:{index}" in caplog.text


async def test_a_rejected_commit_gives_back_what_its_lease_took(backend: RedisBackend, client: Redis) -> None:
    """commit_and_lease: when the commit is rejected, the jobs its lease took are released unspent."""
    prefix = backend.prefix
    await enqueue(backend, "q", "culprit")
    [culprit] = await backend.lease(LEASE, 10, T0)
    await enqueue(backend, "q", "waiting-0", "waiting-1")
    await corrupt(client, f"{prefix}:state:bad")
    bad = _ack(culprit, Effects(states=[StateWrite("bad", StateOp.SET, b"1")]))
    with pytest.raises(BackendError, match=f"{prefix}:state:bad"):
        await backend.commit_and_lease([bad], T0, LEASE, 10)
    [stats] = await backend.stats(["q"], T0)
    assert (stats.ready, stats.leased) == (2, 1)
    again = await backend.lease(LEASE, 10, T0)
    assert [(job.id, job.attempt) for job in again] == [("waiting-0", 1), ("waiting-1", 1)]


async def test_reading_a_corrupt_state_is_an_error_naming_its_key(
    backend: RedisBackend, client: Redis
) -> None:
    await client.set(f"{backend.prefix}:state:bad", b"x")
    await client.hset(f"{backend.prefix}:state:odd", mapping={"v": b"1", "n": b"one"})
    for key in ("bad", "odd"):
        with pytest.raises(BackendError, match=f"{backend.prefix}:state:{key}"):
            await backend.get_states(["fine", key])


# a worker


async def test_a_worker_runs_every_other_job_beside_a_corrupt_one(url: str, client: Redis) -> None:
    svc = Service("svc")
    done: list[str] = []

    for queue in ("first", "second"):

        @svc.queue_worker(queue, lifecycle=Lifecycle(max_attempts=1))
        async def work(ctx: Context, job: dict[str, str]) -> None:
            done.append(job["n"])

    app = App([svc], backend=url, worker=WorkerConfig(concurrency=4, poll_interval=0.05))
    async with app:
        ids = [
            await app.enqueue(queue, {"n": f"{queue}-{n}"}) for queue in ("first", "second") for n in range(5)
        ]
    assert isinstance(app.backend, RedisBackend)
    await client.set(f"{app.backend.prefix}:job:{ids[2]}", b"junk")
    async with running(app):
        await wait_until(lambda: len(done) == 9, message="the nine good jobs")
        [dead] = await wait_until(app.dead_letters("first").list)
    assert sorted(done) == sorted(
        f"{q}-{n}" for q in ("first", "second") for n in range(5) if (q, n) != ("first", 2)
    )
    assert dead.id == ids[2] and f"job:{ids[2]} holds a string" in dead.error.message


async def test_a_failing_job_is_dead_lettered_once_beside_corrupt_dead_letter_indexes(
    url: str, client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    svc = Service("svc")
    calls: list[str] = []

    @svc.queue_worker("q", lifecycle=Lifecycle(max_attempts=1, visibility_timeout=1.0))
    async def fail(ctx: Context, job: dict[str, str]) -> None:
        calls.append(job["n"])
        raise RuntimeError("no luck")

    app = App([svc], backend=url, worker=WorkerConfig(concurrency=4, poll_interval=0.05))
    async with app:
        job_id = await app.enqueue("q", {"n": "x"})
    assert isinstance(app.backend, RedisBackend)
    prefix = app.backend.prefix
    for index in ("{q}:dead", "dead"):
        await client.set(f"{prefix}:{index}", b"junk")
    with caplog.at_level(logging.ERROR, logger="conveyor.backends.redis"):
        async with running(app):
            # (listing reads the indexes: only once they are set aside)
            moved = [f"{prefix}:corrupt:{index}" for index in ("{q}:dead", "dead")]

            async def set_aside() -> bool:
                return bool(await client.exists(*moved) == len(moved))

            await wait_until(set_aside, message="the indexes set aside")
            [dead] = await wait_until(app.dead_letters("q").list, message="the dead letter")
            assert [d.id for d in await app.dead_letters().list()] == [job_id]
    assert calls == ["x"]
    assert (dead.id, dead.attempts, dead.error.message) == (job_id, 1, "no luck")
    for index in ("{q}:dead", "dead"):
        assert await client.get(f"{prefix}:corrupt:{index}") == b"junk"
        assert f"{prefix}:{index} holds a string" in caplog.text
        assert f"moved to {prefix}:corrupt:{index}" in caplog.text
