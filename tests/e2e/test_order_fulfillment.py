"""The seed's order fulfillment, end to end, on every backend: fulfilled, backordered, compensated."""

from __future__ import annotations

from typing import Any

from conveyor import App
from conveyor.examples.order_fulfillment import make_app, wait_for_orders
from conveyor.testing import running


async def test_three_paths_end_to_end(backend_url: str) -> None:
    app = make_app(backend_url)
    inventory, payments, mailer = (app.runtime.resources[n] for n in ("inventory", "payments", "mailer"))
    async with app:
        await _run_orders(app)
        await _check_paths(app, inventory, payments, mailer)


async def _run_orders(app: App) -> None:
    async with running(app):
        await app.invoke("place_order", {"order_id": "order-1", "items": [{"sku": "apple", "qty": 2}]})
        await app.invoke("place_order", {"order_id": "order-2", "items": [{"sku": "plum", "qty": 1}]})
        await app.invoke(
            "place_order",
            {"order_id": "order-3", "items": [{"sku": "pear", "qty": 3}], "card": "0000"},
        )
        await wait_for_orders(app, ["order-1", "order-2", "order-3"], timeout=30)


async def _check_paths(app: App, inventory: Any, payments: Any, mailer: Any) -> None:
    fulfilled = await app.workflows.status("order-1")
    assert fulfilled.state == "completed" and fulfilled.workflow == "order_fulfillment"
    assert fulfilled.path == [
        "(order_placed)",
        "validate_inventory",
        "(inventory_reserved)",
        "process_payment",
        "(payment_processed)",
        "create_shipment",
        "(shipment_created)",
        "send_confirmation",
        "(order_confirmed)",
    ]
    assert (await app.states.get("workflow:order-1"))["step"] == "confirmed"

    backordered = await app.workflows.status("order-2")
    assert backordered.state == "failed"
    assert backordered.path == [
        "(order_placed)",
        "validate_inventory",
        "(inventory_unavailable)",
        "notify_backorder",
        "(order_backordered)",
    ]

    compensated = await app.workflows.status("order-3")
    assert compensated.state == "compensated"
    assert compensated.compensations == ["process_payment"]
    assert compensated.path == [
        "(order_placed)",
        "validate_inventory",
        "(inventory_reserved)",
        "process_payment✗",
        "(payment_failed)",
        "handle_payment_failure",
        "(payment_compensated)",
    ]
    assert "declined" in (compensated.last_error or "")
    [dead] = await app.dead_letters("process_payment")
    assert dead.attempts == 1 and "declined" in dead.error.message

    # effects of the business: stock back for the compensated order, one charge, three mails
    assert inventory.stock == {"apple": 998, "pear": 1000, "plum": 0}
    assert list(payments.charges.values()) == ["pay_00001"]
    assert sorted(mailer.sent) == [
        ("order-1", "confirmation"),
        ("order-2", "backordered"),
        ("order-3", "payment_failed"),
    ]


async def test_workflows_are_listed_and_filtered_by_state(backend_url: str) -> None:
    app = make_app(backend_url)
    async with app:
        await _run_orders(app)
        everything = await app.workflows.list()
        compensated = await app.workflows.list(state="compensated")
        limited = await app.workflows.list(workflow="order_fulfillment", limit=2)
        later = await app.workflows.list(since=app.clock.now() + 1)
    assert sorted(s.id for s in everything) == ["order-1", "order-2", "order-3"]
    assert [s.id for s in compensated] == ["order-3"]
    assert len(limited) == 2 and later == []
