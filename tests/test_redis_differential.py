"""The Redis backend against the in-memory reference, on random operations.

Batches of commits run as one script on Redis and one after the other on the reference; the random
world is small on purpose, so the same ids, idempotency keys and state keys meet again and again:
settlements of jobs that were just retried or cancelled, cancels of jobs enqueued earlier in the
batch, ids enqueued on two queues, events delivered twice, extends of expired leases, dead letters
redriven and purged, idempotency keys outliving their retention.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from conveyor.backends.memory import MemoryBackend
from conveyor.backends.redis import RedisBackend
from conveyor.ports import (
    Backend,
    Commit,
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

try:  # tests/ imported as a package, or as a plain directory on sys.path (as conftest.py is)
    from tests.conftest import fresh_url
except ModuleNotFoundError:
    from conftest import fresh_url  # type: ignore[no-redef,import-not-found,unused-ignore]

T0 = 1_700_000_000.0
QUEUES = ("q0", "q1", "q2")
ROUTES = [("e0", "q0"), ("e0", "q1"), ("e1", "q2")]
RETENTION = 20.0
ERROR = ErrorInfo("ValueError", "boom", None)


@pytest.fixture
async def redis_store(tmp_path: Path) -> AsyncIterator[RedisBackend]:
    store = RedisBackend(fresh_url("redis", tmp_path), idempotency_retention=RETENTION)
    await store.connect()
    try:
        yield store
    finally:
        client = store._client
        keys = [key async for key in client.scan_iter(match=f"{store.prefix}:*", count=1000)]
        if keys:
            await client.unlink(*keys)
        await store.close()


class World:
    """Random operations over a few ids, keys and queues; leases are tracked per backend."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.tick = 0
        self.leases: dict[str, tuple[int, int]] = {}  # job id -> (reference token, redis token)

    def at(self, now: float) -> float:
        # distinct times: lease order is then free of ties, which the two may break differently
        self.tick += 1
        return now + self.rng.choice([0.0, 0.0, 9.0]) + self.tick * 1e-4

    def job(self, now: float) -> NewJob:
        rng = self.rng
        job_id = f"j{rng.randrange(40)}"
        key = rng.choice([None, None, "k0", "k1"])
        return NewJob(job_id, rng.choice(QUEUES), job_id.encode(), self.at(now), now, key)

    def effects(self, now: float, round_: int) -> Effects:
        rng = self.rng
        key = rng.choice(["s0", "s1"])
        expected = rng.choice([None, None, 0, 1, 2])
        write = (
            StateWrite(key, StateOp.DELETE, expected_version=expected)
            if rng.random() < 0.3
            else StateWrite(key, StateOp.SET, b"v%d" % round_, expected)
        )
        return Effects(
            jobs=[self.job(now) for _ in range(rng.choice([0, 1, 1, 2]))],
            events=[NewEvent(f"ev{rng.randrange(5)}", rng.choice(["e0", "e1", "e2"]), b"ev", self.at(now))]
            if rng.random() < 0.3
            else [],
            states=[write] if rng.random() < 0.4 else [],
            cancels=[(rng.choice(QUEUES), rng.choice(["k0", "k1"]))] if rng.random() < 0.3 else [],
            history=[HistoryEntry(f"wf{rng.randrange(3)}", now, "step", "q0", None, round_)],
        )

    def commits(self, now: float, round_: int) -> tuple[list[Commit], list[Commit]]:
        """The same random batch for the reference and for Redis (each with its own tokens)."""
        rng = self.rng
        reference: list[Commit] = []
        redis: list[Commit] = []
        for _ in range(rng.randint(1, 6)):
            effects = self.effects(now, round_)
            if self.leases and rng.random() < 0.7:
                job_id = rng.choice(sorted(self.leases))
                outcome = rng.choice(list(Outcome))
                available_at = self.at(now) if outcome is Outcome.RETRY else None
                error = ERROR if outcome in (Outcome.DEAD, Outcome.RETRY) else None
                for batch, token in zip((reference, redis), self.leases[job_id], strict=True):
                    batch.append(Commit(Settlement(job_id, token, outcome, available_at, error), effects))
            else:
                reference.append(Commit(None, effects))
                redis.append(Commit(None, effects))
        return reference, redis


async def observe(store: Backend, now: float) -> tuple[object, ...]:
    states = await store.get_states(["s0", "s1"])
    return (
        sorted((key, record.value, record.version) for key, record in states.items()),
        [(d.id, d.queue, d.attempts, d.body, d.failed_at) for d in await store.dead_letters(None, 1000)],
        await store.stats(list(QUEUES), now),
        [await store.history(f"wf{n}") for n in range(3)],
        sorted(await store.subscriptions()),
    )


@pytest.mark.parametrize("seed", range(8))
async def test_random_operations_match_the_reference(redis_store: RedisBackend, seed: int) -> None:
    reference: Backend = MemoryBackend(idempotency_retention=RETENTION)
    stores: tuple[Backend, Backend] = (reference, redis_store)
    world = World(seed)
    rng = world.rng
    for store in stores:
        await store.register_subscriptions(ROUTES)
    now = T0
    for round_ in range(40):
        now += rng.choice([1.0, 2.0, 7.0, 31.0])
        batches = world.commits(now, round_)
        results = [await store.commit(batch, now) for store, batch in zip(stores, batches, strict=True)]
        assert results[1] == results[0], f"round {round_}: commit"

        # Everything due, compared as sets: jobs leased together expire together, and the two
        # break such ties differently (the lease order itself is tested in test_redis_backend).
        queues = {q: rng.choice([10.5, 30.5]) for q in rng.sample(QUEUES, rng.randint(1, 3))}
        leased = [await store.lease(queues, 1000, now) for store in stores]
        shape = [
            sorted((j.id, j.queue, j.attempt, j.body, j.lease_deadline) for j in jobs) for jobs in leased
        ]
        assert shape[1] == shape[0], f"round {round_}: lease"
        tokens = {job.id: job.token for job in leased[1]}
        for job in leased[0]:
            world.leases[job.id] = (job.token, tokens[job.id])

        if world.leases and rng.random() < 0.3:
            job_id = rng.choice(sorted(world.leases))
            # always later than any deadline so far: MemoryBackend.extend pushes a second heap
            # entry for a deadline that does not move, and its lease then returns the job twice
            until = now + 100.0
            extended = [
                await store.extend(job_id, token, until, now)
                for store, token in zip(stores, world.leases[job_id], strict=True)
            ]
            assert extended[1] == extended[0], f"round {round_}: extend"
        if rng.random() < 0.2:
            dead = [d.id for d in await reference.dead_letters(None)]
            ids = [*dead[:2], "missing"]
            if rng.random() < 0.5:
                counts = [await store.redrive(ids, now) for store in stores]
            else:
                counts = [await store.purge(ids) for store in stores]
            assert counts[1] == counts[0], f"round {round_}: redrive or purge"
        assert await observe(redis_store, now) == await observe(reference, now), f"round {round_}"


async def test_the_reference_run_leaves_no_stray_keys(redis_store: RedisBackend) -> None:
    """Every key a random run writes is one of the documented families."""
    world = World(99)
    now = T0
    await redis_store.register_subscriptions(ROUTES)
    for round_ in range(20):
        now += 31.0
        await redis_store.commit(world.commits(now, round_)[1], now)
        for job in await redis_store.lease({q: 10.0 for q in QUEUES}, 1000, now):
            world.leases[job.id] = (job.token, job.token)
    client: Redis = redis_store._client
    prefix = redis_store.prefix
    families = {
        key.decode().removeprefix(f"{prefix}:").split(":")[0]
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000)
    }
    documented = {"{q0}", "{q1}", "{q2}", "job", "dead", "token", "events", "sub", "state", "history"}
    assert families <= documented
