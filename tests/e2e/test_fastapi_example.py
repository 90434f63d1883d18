"""examples/fastapi_shop (docs/fastapi.md): emit from a request handler, the lifespan, the mounted API."""

from __future__ import annotations

from pathlib import Path

import httpx
from examples.fastapi_shop.app import create_api

from conveyor.examples.order_fulfillment import make_app
from conveyor.testing import wait_until

ORDER = {"order_id": "order-1", "items": [{"sku": "apple", "qty": 1}], "card": "4242"}


async def test_a_request_starts_a_workflow_that_the_workers_of_the_lifespan_finish(tmp_path: Path) -> None:
    conveyor_app = make_app(f"sqlite:///{tmp_path}/shop.db")
    api = create_api(conveyor_app)
    transport = httpx.ASGITransport(app=api)
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        assert conveyor_app.connected
        accepted = await client.post("/orders", json=ORDER)
        assert accepted.status_code == 202
        assert accepted.json() == {"order_id": "order-1", "status_url": "/orders/order-1"}
        assert (await client.post("/orders", json=ORDER)).status_code == 202  # the same order again

        async def completed() -> bool:
            return bool((await client.get("/orders/order-1")).json()["state"] == "completed")

        await wait_until(completed, timeout=30, message="order-1 completed")
        shown = (await client.get("/orders/order-1")).json()
        assert shown["path"][:2] == ["(order_placed)", "validate_inventory"]
        assert shown["path"].count("(order_placed)") == 1  # one workflow for the two posts
        assert (await client.get("/orders/nope")).status_code == 404
        assert (await client.get("/conveyor/health/live")).json() == {"status": "ok"}
        assert (await client.get("/conveyor/health/ready")).status_code == 200
    assert not conveyor_app.connected  # the lifespan closed what it opened
