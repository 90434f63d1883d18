"""The transactional outbox: an app row and the job that processes it commit together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conveyor import App, ConfigurationError, Context, Service
from conveyor.app import ENQUEUE_BATCH
from conveyor.testing import running, wait_until

try:
    from tests.conftest import drop, fresh_url
except ModuleNotFoundError:
    from conftest import drop, fresh_url  # type: ignore[no-redef,import-not-found,unused-ignore]

shop = Service("shop")
shipped: list[str] = []


@shop.queue_worker("ship_order")
async def ship_order(ctx: Context, job: dict[str, Any]) -> None:
    shipped.append(job["order_id"])


@pytest.fixture
async def pg_url(tmp_path: Path) -> AsyncIterator[str]:
    url = fresh_url("postgres", tmp_path)
    yield url
    drop(url)


async def test_job_commits_and_rolls_back_with_the_callers_transaction(pg_url: str) -> None:
    shipped.clear()
    app = App([shop], backend=pg_url)
    dsn = pg_url.split("?", 1)[0]
    schema = pg_url.rsplit("schema=", 1)[1]
    async with app, running(app), await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(f'CREATE TABLE "{schema}".orders (id text PRIMARY KEY)')
        await conn.commit()
        async with conn.transaction(force_rollback=True):
            await conn.execute(f'INSERT INTO "{schema}".orders VALUES (%s)', ("o-1",))
            await app.enqueue("ship_order", {"order_id": "o-1"}, connection=conn)
        async with conn.transaction():
            await conn.execute(f'INSERT INTO "{schema}".orders VALUES (%s)', ("o-2",))
            await app.enqueue("ship_order", {"order_id": "o-2"}, connection=conn)
            await app.emit("order_paid", {"order_id": "o-2"}, connection=conn)
        await wait_until(lambda: shipped == ["o-2"])
        await wait_until(lambda: _drained(app))
        rows = await (await conn.execute(f'SELECT id FROM "{schema}".orders')).fetchall()
    assert rows == [("o-2",)] and shipped == ["o-2"]


async def _drained(app: App) -> bool:
    [stats] = await app.stats(["ship_order"])
    return stats.ready + stats.leased + stats.scheduled == 0


async def test_backends_without_the_outbox_say_so() -> None:
    app = App([shop], backend="memory://")
    async with app:
        with pytest.raises(ConfigurationError, match="cannot write inside your transaction"):
            await app.enqueue("ship_order", {"order_id": "o-3"}, connection=object())


async def test_enqueue_many_in_the_callers_transaction_is_all_or_nothing(pg_url: str) -> None:
    app = App([shop], backend=pg_url)
    dsn = pg_url.split("?", 1)[0]
    count = 2 * ENQUEUE_BATCH + 1  # several batches, all inside the one transaction
    payloads = [{"order_id": f"o-{n}"} for n in range(count)]
    async with app, await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.transaction(force_rollback=True):
            await app.enqueue_many("ship_order", payloads, connection=conn)
        [stats] = await app.stats(["ship_order"])
        assert stats.ready == 0
        async with conn.transaction():
            ids = await app.enqueue_many("ship_order", payloads, connection=conn)
        [stats] = await app.stats(["ship_order"])
    assert stats.ready == count and len(set(ids)) == count
