"""The PostgreSQL backend against the in-memory reference, on random batches.

``commit_batch`` applies a batch set-wise; the reference applies commits one after the other. The
random batches here are full of what could tell the two apart: a job settled twice, a state key
written by several commits with and without expected versions, cancels of keys enqueued in the
same batch, idempotency keys shared across commits, job ids reused, events delivered twice.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.backends.memory import MemoryBackend
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
from tests.conftest import fresh_url

psycopg = pytest.importorskip("psycopg")

from conveyor.backends.postgres import PostgresBackend  # noqa: E402

T0 = 1_700_000_000.0
QUEUES = ["q0", "q1", "q2"]
KEYS = ["k0", "k1", "k2"]
STATE_KEYS = ["s0", "s1", "s2"]
ROUTES = [("e0", "q0"), ("e0", "q1"), ("e1", "q2")]
ERR = ErrorInfo("ValueError", "boom", "tb")
LEASE = 30.0
"""On the whole-second grid of ``now``: retries and releases can land exactly on a lease deadline."""


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    url = fresh_url("postgres", tmp_path)
    yield url
    with psycopg.connect(url.split("?", 1)[0], autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{url.rsplit("schema=", 1)[1]}" CASCADE')


class Scenario:
    """Random commits over a small world, with each backend's lease tokens tracked apart."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.known: list[str] = []
        self.tokens: dict[str, tuple[int, int]] = {}  # job id -> (memory token, postgres token)
        self.counter = 0
        self.enqueues = 0

    def new_job(self, now: float) -> NewJob:
        rng = self.rng
        if self.known and rng.random() < 0.15:
            job_id = rng.choice(self.known)  # an id that exists, or existed
        else:
            self.counter += 1
            job_id = f"j{self.counter}"
            self.known.append(job_id)
        key = rng.choice([None, None, *KEYS])
        # distinct times keep lease order free of ties
        self.enqueues += 1
        at = now + rng.choice([0.0, 0.0, 7.0]) + self.enqueues * 1e-4
        return NewJob(job_id, rng.choice(QUEUES), b"body-" + job_id.encode(), at, now, key)

    def state_write(self) -> StateWrite:
        rng = self.rng
        key = rng.choice(STATE_KEYS)
        expected = rng.choice([None, None, 0, 1, 2])
        if rng.random() < 0.25:
            return StateWrite(key, StateOp.DELETE, expected_version=expected)
        return StateWrite(key, StateOp.SET, rng.randbytes(3), expected)

    def commit(self, now: float, which: int) -> tuple[Commit, Commit]:
        """The same commit for memory (which=0 tokens) and postgres (which=1 tokens)."""
        rng = self.rng
        settlement: tuple[Settlement, Settlement] | None = None
        if self.tokens and rng.random() < 0.7:
            job_id = rng.choice(sorted(self.tokens))
            tokens = self.tokens[job_id]
            if rng.random() < 0.1:
                tokens = (-1, -1)
            outcome = rng.choice(list(Outcome))
            available_at = now + rng.choice([0.0, 3.0]) if outcome is Outcome.RETRY else None
            error = ERR if outcome in (Outcome.DEAD, Outcome.RETRY) else None
            settlement = (
                Settlement(job_id, tokens[0], outcome, available_at, error),
                Settlement(job_id, tokens[1], outcome, available_at, error),
            )
        effects = Effects(
            jobs=[self.new_job(now) for _ in range(rng.choice([0, 0, 1, 2, 3]))],
            events=[
                NewEvent(f"ev{rng.randrange(6)}", rng.choice(["e0", "e1", "e2"]), b"ev", now)
                for _ in range(rng.choice([0, 0, 1]))
            ],
            states=[self.state_write() for _ in range(rng.choice([0, 0, 1, 2, 3]))],
            cancels=[(rng.choice(QUEUES), rng.choice(KEYS)) for _ in range(rng.choice([0, 0, 1]))],
            history=[HistoryEntry("wf", now, "started", "q0", None, which)],
        )
        return (
            Commit(settlement[0] if settlement else None, effects),
            Commit(settlement[1] if settlement else None, effects),
        )


async def observe(store: Backend, now: float) -> tuple[object, ...]:
    states = await store.get_states(STATE_KEYS)
    dead = await store.dead_letters(None, 1000)
    stats = await store.stats(QUEUES, now)
    return (
        sorted((k, v.value, v.version) for k, v in states.items()),
        sorted((d.id, d.queue, d.attempts, d.body) for d in dead),
        stats,
        [(e.at, e.kind) for e in await store.history("wf")],
    )


@pytest.mark.parametrize("seed", range(6))
async def test_random_batches_match_the_reference(pg_url: str, seed: int) -> None:
    memory, postgres = MemoryBackend(), PostgresBackend(pg_url)
    await postgres.connect()
    try:
        for store in (memory, postgres):
            await store.register_subscriptions(ROUTES)
        scenario = Scenario(seed)
        rng = scenario.rng
        now = T0
        for round_ in range(30):
            now += rng.choice([1.0, 2.0, 5.0, 40.0])
            pairs = [scenario.commit(now, round_) for _ in range(rng.randint(1, 8))]
            expected = await memory.commit([m for m, _ in pairs], now)
            got = await postgres.commit([p for _, p in pairs], now)
            assert got == expected, f"round {round_}"

            queues = {q: LEASE for q in rng.sample(QUEUES, rng.randint(1, 3))}
            leased_m = await memory.lease(queues, 1000, now)
            leased_p = await postgres.lease(queues, 1000, now)
            # sorted: jobs of one event share their time, and ties may come in any order
            assert sorted((j.id, j.queue, j.attempt, j.body, j.lease_deadline) for j in leased_p) == sorted(
                (j.id, j.queue, j.attempt, j.body, j.lease_deadline) for j in leased_m
            ), f"round {round_}"
            tokens_p = {j.id: j.token for j in leased_p}
            for j in leased_m:
                scenario.tokens[j.id] = (j.token, tokens_p[j.id])
            assert await observe(postgres, now) == await observe(memory, now), f"round {round_}"
    finally:
        await postgres.close()
