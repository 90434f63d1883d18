"""A small app for the server's tests: a typed command, a queue that dead-letters a declined card,
an event, an approval gate and a workflow."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field

from conveyor import App, Context, PermanentError, Service, WorkerConfig, Workflow
from conveyor.runtime.clock import Clock

svc = Service("shop")
svc.approval_gate("review", timeout=timedelta(hours=1))


class Quote(BaseModel):
    sku: str = Field(min_length=1, max_length=50)
    qty: int = Field(ge=1, le=100)


class Price(BaseModel):
    sku: str
    total: float


@svc.command("quote", "Price an order line", payload=Quote, result=Price)
async def quote(ctx: Context, cmd: Quote) -> Price:
    return Price(sku=cmd.sku, total=cmd.qty * 2.5)


class Order(BaseModel):
    order_id: str = Field(min_length=1, max_length=100)
    card: str = Field("4242", max_length=20)


class Placed(BaseModel):
    placed: str


@svc.command("place", "Place an order", payload=Order, result=Placed, emits=["placed"])
async def place(ctx: Context, cmd: Order) -> Placed:
    await ctx.emit("placed", cmd.model_dump(), correlation_id=cmd.order_id)
    return Placed(placed=cmd.order_id)


@svc.subscription("placed", enqueue="charge")
async def _placed(ctx: Context, event: dict[str, Any]) -> None: ...


@svc.queue_worker("charge", emits=["charged"])
async def charge(ctx: Context, job: dict[str, Any]) -> None:
    if job.get("card") == "0000":
        raise PermanentError("card declined")
    await ctx.emit("charged", {"order_id": job.get("order_id")})


@svc.queue_worker("review_order")
async def review_order(ctx: Context, job: dict[str, Any]) -> None:
    await ctx.request_approval("review", {"order_id": job.get("order_id")})


@svc.subscription("review_approved", emits=["reviewed"])
async def reviewed(ctx: Context, event: dict[str, Any]) -> None:
    await ctx.emit("reviewed", {})


@svc.subscription("review_rejected", emits=["refused"])
async def refused(ctx: Context, event: dict[str, Any]) -> None:
    await ctx.emit("refused", {})


ORDER = Workflow("order", start="placed", completed=["charged"], failed=[])
REVIEW = Workflow("review", start="review_requested", completed=["reviewed"], failed=["refused"])


def make_app(backend: str, clock: Clock | None = None) -> App:
    return App(
        [svc],
        backend=backend,
        clock=clock,
        workflows=[ORDER, REVIEW],
        worker=WorkerConfig(concurrency=4, poll_interval=0.05),
    )
