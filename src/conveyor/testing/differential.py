"""The differential contract: a backend against the in-memory reference, on random operations.

A backend applies a batch of commits set-wise (one transaction, one script); the reference
:class:`~conveyor.backends.memory.MemoryBackend` applies them one after the other. The contract
tests name the rules one at a time; this suite looks for the combinations nobody wrote down. The
random world is small on purpose, so the same ids, idempotency keys and state keys meet again and
again: a job settled twice or with a stale token, settlements of jobs just retried or cancelled, a
state key written by several commits of one batch with and without expected versions, cancels of
keys enqueued earlier in the batch, job ids reused (on other queues too), events delivered twice,
leases ending exactly when a retry falls due, extends of expired leases, dead letters redriven and
purged, idempotency keys outliving their retention, history pruned. After every round both stores
must give the same results and look the same through every read of the ports.

Use it from a test module by subclassing, with a ``backend_url`` fixture as for
:class:`~conveyor.testing.store_contract.StoreContract`::

    class TestMyBackendDifferential(DifferentialContract):
        @pytest.fixture
        def backend_url(self, tmp_path):
            return f"sqlite:///{tmp_path}/test.db"

Six seeds run by default; ``CONVEYOR_DIFF_SEEDS=200`` runs more for a local soak. A failing seed
names itself in the test id, and the assertion names its round and step.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlencode

import pytest

from conveyor.backends import open_backend
from conveyor.backends.memory import MemoryBackend
from conveyor.ports import (
    Backend,
    Commit,
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

T0 = 1_700_000_000.0
QUEUES = ("q0", "q1", "q2")
IDEMPOTENCY_KEYS = ("k0", "k1", "k2")
STATE_KEYS = ("s0", "s1", "s2")
EVENTS = ("e0", "e1", "e2")
ROUTES = [("e0", "q0"), ("e0", "q1"), ("e1", "q2")]
"""``e2`` starts with no subscriber; a route to it may be registered during the run."""
WORKFLOWS = ("wf0", "wf1", "wf2")
RETENTION = 20.0
"""Idempotency retention, short against the steps of ``now``: keys expire within a run."""
LEASE_SECONDS = (10.0, 10.5, 30.0, 30.5)
"""Whole seconds on the whole-second grid of ``now`` make retries and releases land exactly on a
lease deadline; the half seconds keep deadlines apart from everything else."""
ERROR = ErrorInfo("ValueError", "boom", "Traceback ...")


def seeds() -> range:
    """The seeds to run: 6, or ``CONVEYOR_DIFF_SEEDS`` for a soak run."""
    return range(int(os.environ.get("CONVEYOR_DIFF_SEEDS", "6")))


def with_options(url: str, **options: object) -> str:
    """``url`` with ``options`` added to its query string (a backend reads its options there)."""
    # not urlunsplit: it turns sqlite:///path (an empty host) into sqlite://path
    return url + ("&" if "?" in url else "?") + urlencode({k: str(v) for k, v in options.items()})


class Scenario:
    """Random operations over a small world, the same for both stores.

    Each store hands out its own fencing tokens, so a lease is remembered as a pair of tokens:
    ``leases[job_id] = (reference token, backend token, deadline)``.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.tick = 0
        self.known: list[str] = []
        self.leases: dict[str, tuple[int, int, float]] = {}

    def at(self, now: float, *later: float) -> float:
        """A distinct time at or just after ``now`` (optionally plus one of ``later``): lease
        order is then free of ties, which the two stores may break differently."""
        self.tick += 1
        return now + (self.rng.choice(later) if later else 0.0) + self.tick * 1e-4

    def job_id(self) -> str:
        if self.known and self.rng.random() < 0.3:
            return self.rng.choice(self.known)  # one that exists, or existed, maybe on another queue
        self.known.append(f"j{len(self.known)}")
        return self.known[-1]

    def new_job(self, now: float) -> NewJob:
        rng, job_id = self.rng, self.job_id()
        key = rng.choice([None, None, *IDEMPOTENCY_KEYS])
        at = self.at(now, 0.0, 0.0, 7.0)
        return NewJob(job_id, rng.choice(QUEUES), b"body-" + job_id.encode(), at, now, key)

    def state_write(self, round_: int) -> StateWrite:
        rng = self.rng
        key, expected = rng.choice(STATE_KEYS), rng.choice([None, None, 0, 1, 2])
        if rng.random() < 0.25:
            return StateWrite(key, StateOp.DELETE, expected_version=expected)
        return StateWrite(key, StateOp.SET, b"v%d-" % round_ + rng.randbytes(2), expected)

    def history_entry(self, now: float, round_: int) -> HistoryEntry:
        rng = self.rng
        kind = rng.choice(["enqueued", "started", "succeeded", "retried", "state_changed"])
        message_id = rng.choice([None, f"m{round_}"])
        detail = rng.choice([None, f'{{"round": {round_}}}'])
        return HistoryEntry(rng.choice(WORKFLOWS), self.at(now), kind, "q0", message_id, round_, detail)

    def effects(self, now: float, round_: int) -> Effects:
        rng = self.rng
        return Effects(
            jobs=[self.new_job(now) for _ in range(rng.choice([0, 0, 1, 2, 3]))],
            events=[
                NewEvent(f"ev{rng.randrange(6)}", rng.choice(EVENTS), b"ev", rng.choice([now, self.at(now)]))
                for _ in range(rng.choice([0, 0, 1]))
            ],
            states=[self.state_write(round_) for _ in range(rng.choice([0, 0, 1, 2, 3]))],
            cancels=[
                (rng.choice(QUEUES), rng.choice(IDEMPOTENCY_KEYS)) for _ in range(rng.choice([0, 0, 1]))
            ],
            history=[self.history_entry(now, round_) for _ in range(rng.choice([0, 1, 1, 2]))],
        )

    def settlements(self, now: float) -> tuple[Settlement, Settlement] | None:
        """The same settlement for both stores, each with its own token (or a stale one)."""
        rng = self.rng
        if not self.leases or rng.random() < 0.3:
            return None
        job_id = rng.choice(sorted(self.leases))
        reference_token, backend_token, _ = self.leases[job_id]
        if rng.random() < 0.1:
            reference_token = backend_token = -1
        outcome = rng.choice(list(Outcome))
        available_at = None
        if outcome is Outcome.RETRY:
            available_at = rng.choice([now, now + 3.0, self.at(now)])
        error = ERROR if outcome in (Outcome.DEAD, Outcome.RETRY) else None
        return (
            Settlement(job_id, reference_token, outcome, available_at, error),
            Settlement(job_id, backend_token, outcome, available_at, error),
        )

    def commits(self, now: float, round_: int) -> tuple[list[Commit], list[Commit]]:
        """One random batch, as the reference's commits and the backend's."""
        reference: list[Commit] = []
        backend: list[Commit] = []
        for _ in range(self.rng.randint(1, 8)):
            effects = self.effects(now, round_)
            pair = self.settlements(now)
            reference.append(Commit(pair[0] if pair else None, effects))
            backend.append(Commit(pair[1] if pair else None, effects))
        return reference, backend

    def lease_request(self) -> dict[str, float]:
        rng = self.rng
        return {q: rng.choice(LEASE_SECONDS) for q in rng.sample(QUEUES, rng.randint(1, len(QUEUES)))}

    def remember(self, reference: Sequence[LeasedJob], backend: Sequence[LeasedJob]) -> None:
        tokens = {job.id: job.token for job in backend}
        for job in reference:
            self.leases[job.id] = (job.token, tokens[job.id], job.lease_deadline)

    def extension(self, now: float) -> tuple[str, int, int, float] | None:
        """A lease to extend (maybe expired or stale), to its own deadline, to now, or later."""
        rng = self.rng
        if not self.leases or rng.random() < 0.7:
            return None
        job_id = rng.choice(sorted(self.leases))
        reference_token, backend_token, deadline = self.leases[job_id]
        until = rng.choice([deadline, now, now + 5.0, now + 100.0])
        return job_id, reference_token, backend_token, until


def lease_shape(jobs: Sequence[LeasedJob]) -> list[tuple[object, ...]]:
    """A lease as a set: jobs due together may come in any order (the order has its own tests)."""
    return sorted((j.id, j.queue, j.attempt, j.body, j.lease_deadline, j.enqueued_at) for j in jobs)


async def observe(store: Backend, now: float) -> dict[str, object]:
    """Everything the read ports show of the small world, by what was read."""
    states = await store.get_states(STATE_KEYS)
    return {
        "states": sorted((key, record.value, record.version) for key, record in states.items()),
        "dead letters": await store.dead_letters(None, 1000),
        "a page of q1's dead letters": await store.dead_letters("q1", 2, 1),
        "stats": await store.stats(QUEUES, now),
        "queue names": await store.queue_names(),
        "history": [await store.history(workflow) for workflow in WORKFLOWS],
        "instances": await store.instances(),
        "recent instances": await store.instances(started_after=now - 60.0, limit=2),
        "subscriptions": sorted(await store.subscriptions()),
    }


def assert_same(got: object, expected: object, where: str) -> None:
    """``got == expected``, else an error showing both: this module's asserts are not rewritten
    by pytest (it is no test module), and a bare ``assert`` would show neither side."""
    if got == expected:
        return
    if isinstance(got, dict) and isinstance(expected, dict):
        differing = [name for name in expected if got.get(name) != expected[name]]
        shown = "\n".join(
            f"  {n}:\n    backend:   {got.get(n)!r}\n    reference: {expected[n]!r}" for n in differing
        )
    else:
        shown = f"  backend:   {got!r}\n  reference: {expected!r}"
    raise AssertionError(f"{where} differs from the reference:\n{shown}")


class DifferentialContract:
    """Every backend gives the same answers as the reference on these random runs."""

    rounds = 40

    @pytest.fixture
    async def backend(self, backend_url: str) -> AsyncIterator[Backend]:
        store = open_backend(with_options(backend_url, idempotency_retention=RETENTION))
        assert getattr(store, "idempotency_retention", None) == RETENTION, "read from the URL"
        await store.connect()
        try:
            yield store
        finally:
            await store.close()

    @pytest.mark.parametrize("seed", seeds())
    async def test_random_operations_match_the_reference(self, backend: Backend, seed: int) -> None:
        """Each round: a batch of commits, a lease of everything due, now and then an extend, a
        redrive or purge, a prune, a new route; then everything readable is compared."""
        reference = MemoryBackend(idempotency_retention=RETENTION)
        scenario = Scenario(seed)
        rng = scenario.rng
        for store in (reference, backend):
            await store.register_subscriptions(ROUTES)
        now = T0
        for round_ in range(self.rounds):
            now += rng.choice([1.0, 2.0, 5.0, 7.0, 31.0, 40.0])
            where = f"seed {seed}, round {round_}"

            ours, theirs = scenario.commits(now, round_)
            expected = await reference.commit(ours, now)
            assert_same(await backend.commit(theirs, now), expected, f"{where}: commit")

            queues = scenario.lease_request()
            leased = await reference.lease(queues, 1000, now), await backend.lease(queues, 1000, now)
            assert_same(lease_shape(leased[1]), lease_shape(leased[0]), f"{where}: lease")
            scenario.remember(*leased)

            await self.maybe_extend(reference, backend, scenario, now, where)
            await self.maybe_touch_dead_letters(reference, backend, scenario, now, where)
            if rng.random() < 0.1:
                before = now - rng.choice([30.0, 120.0])
                pruned = await reference.prune_history(before)
                assert_same(await backend.prune_history(before), pruned, f"{where}: prune_history")
            if rng.random() < 0.05:
                route = [(rng.choice(EVENTS), rng.choice(QUEUES))]
                for store in (reference, backend):
                    await store.register_subscriptions(route)

            assert_same(
                await observe(backend, now), await observe(reference, now), f"{where}: what the stores show"
            )

    @staticmethod
    async def maybe_extend(
        reference: Backend, backend: Backend, scenario: Scenario, now: float, where: str
    ) -> None:
        """Now and then extend a lease (live, expired or stale) and remember its new deadline."""
        extension = scenario.extension(now)
        if extension is None:
            return
        job_id, reference_token, backend_token, until = extension
        extended = await reference.extend(job_id, reference_token, until, now)
        assert_same(await backend.extend(job_id, backend_token, until, now), extended, f"{where}: extend")
        if extended:  # never earlier, so a lease of 30 s asked for 5 more keeps its 30
            deadline = max(scenario.leases[job_id][2], until)
            scenario.leases[job_id] = (reference_token, backend_token, deadline)

    @staticmethod
    async def maybe_touch_dead_letters(
        reference: Backend, backend: Backend, scenario: Scenario, now: float, where: str
    ) -> None:
        """Now and then redrive or purge a few dead letters (and an id that is not one)."""
        rng = scenario.rng
        if rng.random() >= 0.2:
            return
        dead = [d.id for d in await reference.dead_letters(None, 1000)]
        ids = [*rng.sample(dead, min(len(dead), 2)), "missing"]
        choice = rng.random()
        if choice < 0.5:
            counts = await reference.redrive(ids, now), await backend.redrive(ids, now)
        elif choice < 0.9:
            counts = await reference.purge(ids), await backend.purge(ids)
        else:
            queue = rng.choice(QUEUES)
            counts = await reference.purge(None, queue), await backend.purge(None, queue)
        assert_same(counts[1], counts[0], f"{where}: redrive or purge")
