"""conveyor inside a FastAPI app: a request emits the event that starts an order's workflow,
another reads where the order is, and the conveyor API and dashboard are mounted at /conveyor.

    CONVEYOR_URL=sqlite:///shop.db uvicorn examples.fastapi_shop.app:api

docs/fastapi.md walks through it; tests/e2e/test_fastapi_example.py runs it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from conveyor import App
from conveyor.examples.order_fulfillment import PlaceOrder, make_app
from conveyor.server import create_app
from conveyor.settings import load_settings


class Accepted(BaseModel):
    order_id: str
    status_url: str


class OrderStatus(BaseModel):
    order_id: str
    state: str
    path: list[str]
    last_error: str | None


def create_api(conveyor_app: App, *, workers: bool = True) -> FastAPI:
    """The shop's API on ``conveyor_app``; with ``workers`` the app's queues are worked in this
    process too (one process for everything; in production run ``conveyor worker`` apart)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(conveyor_app)  # connect once, for every request
            if workers:
                await stack.enter_async_context(conveyor_app.serving())  # graceful stop on exit
            yield

    api = FastAPI(title="shop", lifespan=lifespan)

    @api.post("/orders", status_code=202)
    async def place_order(order: PlaceOrder) -> Accepted:
        # committed when emit returns; the same order posted twice starts one workflow
        await conveyor_app.emit(
            "order_placed", order, correlation_id=order.order_id, idempotency_key=order.order_id
        )
        return Accepted(order_id=order.order_id, status_url=f"/orders/{order.order_id}")

    @api.get("/orders/{order_id}")
    async def order_status(order_id: str) -> OrderStatus:
        status = await conveyor_app.workflows.status(order_id)
        if status.state == "unknown":
            raise HTTPException(404, f"no order {order_id!r}")
        return OrderStatus(
            order_id=order_id, state=status.state, path=status.path, last_error=status.last_error
        )

    # the conveyor API (OpenAPI at /conveyor/docs) and dashboard (/conveyor/ui), tokens from
    # CONVEYOR_API_TOKENS; mounted, its own lifespan does not run: ours connects the app
    api.mount("/conveyor", create_app(conveyor_app, tokens=load_settings().token_roles()))
    return api


api = create_api(make_app(os.environ.get("CONVEYOR_URL", "sqlite:///shop.db")))
