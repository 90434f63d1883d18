"""``conveyor demo``: the seed's order fulfillment on a real backend, with a live progress display."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from conveyor.examples.order_fulfillment import TERMINAL, make_app

STYLE = {"completed": "green", "failed": "red", "compensated": "yellow"}


def demo_orders(count: int) -> list[dict[str, Any]]:
    """A mix: mostly fulfilled, every 7th out of stock, every 5th with a declined card."""
    orders: list[dict[str, Any]] = []
    for n in range(1, count + 1):
        sku = "plum" if n % 7 == 0 else ("apple" if n % 2 else "pear")
        card = "0000" if n % 5 == 0 else "4242"
        orders.append({"order_id": f"order-{n}", "items": [{"sku": sku, "qty": 1 + n % 3}], "card": card})
    return orders


async def run_demo(backend: str, count: int, console: Console) -> bool:
    """Place ``count`` orders, work them to the end, print each path. True if all finished."""
    app = make_app(backend)
    orders = demo_orders(count)
    console.print(f"[bold]conveyor demo[/]: order fulfillment on [cyan]{backend}[/]")
    async with app, app.serving():
        for order in orders:
            await app.invoke("place_order", order)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("workflows finished", total=len(orders))
            pending = {str(o["order_id"]) for o in orders}
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 120
            while pending and loop.time() < deadline:
                for order_id in list(pending):
                    if (await app.workflows.status(order_id)).state in TERMINAL:
                        pending.discard(order_id)
                progress.update(task, completed=len(orders) - len(pending))
                if pending:
                    await asyncio.sleep(0.05)
        statuses = [await app.workflows.status(str(o["order_id"])) for o in orders]
        dead = await app.dead_letters().list(limit=10_000)
    table = Table("order", "state", "path")
    for status in statuses:
        style = STYLE.get(status.state, "cyan")
        table.add_row(status.id, f"[{style}]{status.state}[/]", " → ".join(status.path))
    console.print(table)
    tally = {
        state: sum(s.state == state for s in statuses) for state in ("completed", "failed", "compensated")
    }
    console.print(
        f"{tally['completed']} fulfilled, {tally['failed']} backordered, "
        f"{tally['compensated']} payment failures compensated"
    )
    console.print(f"dead letters (declined cards): {len(dead)}; the database: {backend}")
    console.print(
        "inspect an order: CONVEYOR_URL=<the database> conveyor status "
        "examples.order_fulfillment.app:app order-5   (from the repository root)"
    )
    unfinished = [s.id for s in statuses if s.state not in TERMINAL]
    if unfinished:
        console.print(f"[red]unfinished: {', '.join(unfinished)}[/]")
    return not unfinished
