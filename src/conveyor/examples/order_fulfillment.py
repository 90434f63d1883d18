"""The seed's order fulfillment, in conveyor's API.

::

    order_placed ─► validate_inventory ─┬─ in stock ──► (inventory_reserved) ─► process_payment
                                        └─ out of stock ► (inventory_unavailable) ─► notify_backorder
    process_payment ─┬─ success ─► (payment_processed) ─► create_shipment ─► (shipment_created)
                     │                                    ─► send_confirmation ─► (order_confirmed)
                     └─ card declined ─► dead letter ─► (payment_failed) ─► handle_payment_failure
                                                        (releases the inventory) ─► (payment_compensated)

Each step is an independent queue worker; steps talk through events; the workflow's state lives
in the state store under ``workflow:<order_id>``; each step has its own retry and dead-letter
policy; compensation happens in ``on_dead_letter``, once, never on every retry.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from conveyor import App, Context, Lifecycle, PermanentError, RetryStrategy, Service, Workflow

# payloads


class Item(BaseModel):
    sku: str
    qty: int = Field(gt=0)


class PlaceOrder(BaseModel):
    order_id: str
    items: list[Item]
    card: str = "4242"


class OrderAccepted(BaseModel):
    order_id: str


class ValidateInventory(BaseModel):
    order_id: str
    items: list[Item]
    card: str


class OrderRef(BaseModel):
    order_id: str


class InventoryReserved(BaseModel):
    order_id: str
    items: list[Item]
    card: str


class InventoryUnavailable(BaseModel):
    order_id: str
    items: list[Item]


class PaymentProcessed(BaseModel):
    order_id: str
    payment_id: str
    items: list[Item]


class ShipmentCreated(BaseModel):
    order_id: str
    tracking: str


class PaymentFailed(BaseModel):
    order_id: str
    items: list[Item]
    reason: str


# fake resources (a real app passes its clients here)


@dataclass
class Inventory:
    stock: dict[str, int] = field(default_factory=lambda: {"apple": 1000, "pear": 1000, "plum": 0})
    reserved: dict[str, dict[str, int]] = field(default_factory=dict)

    async def check(self, items: list[Item]) -> bool:
        return all(self.stock.get(i.sku, 0) >= i.qty for i in items)

    async def reserve(self, order_id: str, items: list[Item]) -> None:
        if order_id in self.reserved:  # idempotent: a retried step must not reserve twice
            return
        for i in items:
            self.stock[i.sku] -= i.qty
        self.reserved[order_id] = {i.sku: i.qty for i in items}

    async def release(self, order_id: str) -> None:
        for sku, qty in self.reserved.pop(order_id, {}).items():
            self.stock[sku] += qty


class CardDeclined(Exception):
    pass


@dataclass
class PaymentGateway:
    declined_cards: frozenset[str] = frozenset({"0000"})
    charges: dict[str, str] = field(default_factory=dict)

    async def charge(self, card: str, amount: int, idempotency_key: str) -> str:
        if card in self.declined_cards:
            raise CardDeclined(f"card ending {card} was declined")
        # like Stripe: the same idempotency key returns the same charge, never a second one
        return self.charges.setdefault(idempotency_key, f"pay_{len(self.charges) + 1:05d}")


@dataclass
class Shipping:
    shipments: dict[str, str] = field(default_factory=dict)

    async def schedule_delivery(self, order_id: str) -> str:
        return self.shipments.setdefault(order_id, f"TRK{len(self.shipments) + 1:06d}")


@dataclass
class Mailer:
    sent: list[tuple[str, str]] = field(default_factory=list)

    async def send(self, order_id: str, template: str) -> None:
        self.sent.append((order_id, template))


# the service

orders = Service("orders", version="1", description="Order fulfillment")

STEP = Lifecycle(
    visibility_timeout=60,
    max_attempts=5,
    timeout=30,
    retry=RetryStrategy(initial_delay=5, max_delay=60, multiplier=2, jitter=0.1),
)

ORDER_FULFILLMENT = Workflow(
    "order_fulfillment",
    start="order_placed",
    completed=["order_confirmed"],
    failed=["order_backordered"],
    compensated=["payment_compensated"],
)


async def track(ctx: Context, order_id: str, step: str, **facts: object) -> None:
    """Workflow state for the seed's ``states.setState('workflow:<id>', ...)``."""
    await ctx.states.set(f"workflow:{order_id}", {"step": step, **facts})


@orders.command(
    "place_order",
    "Accept an order and start its fulfillment",
    payload=PlaceOrder,
    result=OrderAccepted,
    emits=["order_placed"],
)
async def place_order(ctx: Context, cmd: PlaceOrder) -> OrderAccepted:
    await ctx.emit("order_placed", cmd, correlation_id=cmd.order_id)
    return OrderAccepted(order_id=cmd.order_id)


orders.subscription("order_placed", enqueue="validate_inventory")


@orders.queue_worker(
    "validate_inventory",
    "Check stock availability",
    payload=ValidateInventory,
    emits=["inventory_reserved", "inventory_unavailable"],
    lifecycle=STEP,
)
async def validate_inventory(ctx: Context, job: ValidateInventory) -> None:
    inventory: Inventory = ctx.resources.inventory
    if await inventory.check(job.items):
        await inventory.reserve(job.order_id, job.items)
        await track(ctx, job.order_id, "inventory_reserved")
        await ctx.emit("inventory_reserved", InventoryReserved(**job.model_dump()))
    else:
        await track(ctx, job.order_id, "inventory_unavailable")
        await ctx.emit("inventory_unavailable", InventoryUnavailable(order_id=job.order_id, items=job.items))


orders.subscription("inventory_unavailable", enqueue="notify_backorder")


@orders.queue_worker(
    "notify_backorder",
    "Tell the customer the order is backordered",
    payload=InventoryUnavailable,
    emits=["order_backordered"],
    lifecycle=STEP,
)
async def notify_backorder(ctx: Context, job: InventoryUnavailable) -> None:
    await ctx.resources.mailer.send(job.order_id, "backordered")
    await track(ctx, job.order_id, "backordered")
    await ctx.emit("order_backordered", OrderRef(order_id=job.order_id))


orders.subscription("inventory_reserved", enqueue="process_payment")


@orders.queue_worker(
    "process_payment",
    "Charge the card",
    payload=InventoryReserved,
    emits=["payment_processed"],
    lifecycle=STEP,
)
async def process_payment(ctx: Context, job: InventoryReserved) -> None:
    amount = sum(i.qty for i in job.items) * 100
    try:
        # the key is stable across retries of this job: the gateway never charges twice
        payment_id = await ctx.resources.payments.charge(job.card, amount, ctx.idempotency_key)
    except CardDeclined as exc:
        raise PermanentError(str(exc)) from exc  # no retry: straight to the dead-letter queue
    await track(ctx, job.order_id, "payment_processed", payment_id=payment_id)
    await ctx.emit(
        "payment_processed",
        PaymentProcessed(order_id=job.order_id, payment_id=payment_id, items=job.items),
    )


@process_payment.on_dead_letter(emits=["payment_failed"])
async def payment_dead_lettered(ctx: Context, job: InventoryReserved | None, error: BaseException) -> None:
    """Compensation starts here, once, when the payment is given up (not on every retry)."""
    if job is not None:
        await ctx.emit(
            "payment_failed",
            PaymentFailed(order_id=job.order_id, items=job.items, reason=str(error)),
        )


orders.subscription("payment_failed", enqueue="handle_payment_failure")


@orders.queue_worker(
    "handle_payment_failure",
    "Release the inventory of a failed payment",
    payload=PaymentFailed,
    emits=["payment_compensated"],
    lifecycle=STEP,
)
async def handle_payment_failure(ctx: Context, job: PaymentFailed) -> None:
    await ctx.resources.inventory.release(job.order_id)
    await ctx.resources.mailer.send(job.order_id, "payment_failed")
    await track(ctx, job.order_id, "compensated", reason=job.reason)
    await ctx.emit("payment_compensated", OrderRef(order_id=job.order_id))


orders.subscription("payment_processed", enqueue="create_shipment")


@orders.queue_worker(
    "create_shipment",
    "Schedule delivery",
    payload=PaymentProcessed,
    emits=["shipment_created"],
    lifecycle=STEP,
)
async def create_shipment(ctx: Context, job: PaymentProcessed) -> None:
    tracking = await ctx.resources.shipping.schedule_delivery(job.order_id)
    await track(ctx, job.order_id, "shipment_created", payment_id=job.payment_id, tracking=tracking)
    await ctx.emit("shipment_created", ShipmentCreated(order_id=job.order_id, tracking=tracking))


orders.subscription("shipment_created", enqueue="send_confirmation")


@orders.queue_worker(
    "send_confirmation",
    "Mail the confirmation",
    payload=ShipmentCreated,
    emits=["order_confirmed"],
    lifecycle=STEP,
)
async def send_confirmation(ctx: Context, job: ShipmentCreated) -> None:
    await ctx.resources.mailer.send(job.order_id, "confirmation")
    await track(ctx, job.order_id, "confirmed", tracking=job.tracking)
    await ctx.emit("order_confirmed", OrderRef(order_id=job.order_id))


def make_app(backend: str = "sqlite:///conveyor-orders.db", **kwargs: object) -> App:
    """The order fulfillment app with fresh fake resources."""
    resources = {
        "inventory": Inventory(),
        "payments": PaymentGateway(),
        "shipping": Shipping(),
        "mailer": Mailer(),
    }
    return App([orders], backend=backend, resources=resources, workflows=[ORDER_FULFILLMENT], **kwargs)  # type: ignore[arg-type]


TERMINAL = {"completed", "failed", "compensated"}


async def wait_for_orders(app: App, order_ids: list[str], *, timeout: float = 60.0) -> None:
    """Until every order's workflow reached a terminal state (bounded by ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = set(order_ids)
    while pending:
        for order_id in list(pending):
            if (await app.workflows.status(order_id)).state in TERMINAL:
                pending.discard(order_id)
        if pending:
            if loop.time() > deadline:
                raise TimeoutError(f"{len(pending)} orders did not finish within {timeout}s")
            await asyncio.sleep(0.02)
