"""The store contract across backend objects: two instances on one store never lease the same job,
and a durable store keeps its jobs and subscriptions across a reopen."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from conveyor.backends import open_backend
from conveyor.ports import Backend, Commit, CommitStatus, Outcome, Settlement
from conveyor.testing.store_contract.fixtures import T0, StoreFixtures, enqueue, job


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


class BackendInstancesContract(StoreFixtures):
    """Several backend objects on one store (part of ``StoreContract``)."""

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
