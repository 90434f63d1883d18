"""``App.enqueue_many``: batches stored several at once, ids in order, and what a failure leaves."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from conveyor import App, Context, EnqueueIncompleteError, PayloadValidationError, Service
from conveyor.app import ENQUEUE_BATCH
from conveyor.model.envelope import Envelope
from conveyor.model.errors import PayloadTooLargeError


class Item(BaseModel):
    n: int
    note: str = ""


def _app(backend_url: str, **options: Any) -> App:
    svc = Service("svc")

    @svc.queue_worker("items", payload=Item)
    async def items(ctx: Context, job: Item) -> None:
        pass

    return App([svc], backend=backend_url, **options)


async def _pending(app: App) -> int:
    [stats] = await app.stats(["items"])
    return stats.ready


async def test_many_batches_are_all_stored_with_their_ids_in_payload_order(backend_url: str) -> None:
    app = _app(backend_url)
    count = 3 * ENQUEUE_BATCH + 7
    async with app:
        ids = await app.enqueue_many("items", [{"n": n} for n in range(count)])
        assert len(set(ids)) == count
        assert await _pending(app) == count
        leased = await app.backend.lease({"items": 30.0}, count, app.clock.now())
    by_id = {job.id: Envelope.decode(job.body) for job in leased}
    assert [by_id[job_id].payload for job_id in ids] == [{"n": n} for n in range(count)]
    assert all(by_id[job_id].correlation_id == job_id for job_id in ids)  # each starts its own workflow


async def test_an_invalid_payload_anywhere_stores_nothing(backend_url: str) -> None:
    app = _app(backend_url)
    payloads: list[Any] = [{"n": n} for n in range(2 * ENQUEUE_BATCH)]
    payloads.append({"n": "not a number"})
    async with app:
        with pytest.raises(PayloadValidationError, match="payload does not match Item"):
            await app.enqueue_many("items", payloads)
        assert await _pending(app) == 0


async def test_a_failed_later_batch_reports_the_jobs_already_stored(backend_url: str) -> None:
    # the limit catches the last payload only when its batch is encoded, after earlier batches left
    app = _app(backend_url, max_payload_bytes=600)
    payloads: list[Any] = [{"n": n} for n in range(ENQUEUE_BATCH + 3)]
    payloads.append(Item(n=0, note="x" * 1000))
    async with app:
        with pytest.raises(EnqueueIncompleteError) as caught:
            await app.enqueue_many("items", payloads)
        stored = caught.value.stored_ids
        assert len(stored) == ENQUEUE_BATCH
        assert isinstance(caught.value.__cause__, PayloadTooLargeError)
        assert await _pending(app) == ENQUEUE_BATCH


async def test_a_failure_in_the_first_batch_raises_the_error_itself(backend_url: str) -> None:
    app = _app(backend_url, max_payload_bytes=600)
    async with app:
        with pytest.raises(PayloadTooLargeError):
            await app.enqueue_many("items", [Item(n=0, note="x" * 1000)])
        assert await _pending(app) == 0


async def test_idempotency_keys_hold_across_batches(backend_url: str) -> None:
    app = _app(backend_url)
    count = ENQUEUE_BATCH + 10
    keys = [f"k{n % (count - 5)}" for n in range(count)]  # the last 5 repeat the first 5 keys
    async with app:
        ids = await app.enqueue_many("items", [{"n": n} for n in range(count)], idempotency_keys=keys)
        assert ids[-5:] == ids[:5]
        assert await _pending(app) == count - 5
