"""The graph draws every declared queue and event, and declared enqueues as edges."""

from __future__ import annotations

from typing import Any

from conveyor import App, Context, Service
from conveyor.operations.graph import build_graph


def test_every_queue_and_event_is_drawn_and_declared_enqueues_are_edges() -> None:
    svc = Service("svc")

    @svc.subscription("order_placed", enqueues=["reserve"])
    async def on_order(ctx: Context, event: dict[str, Any]) -> None: ...

    @svc.queue_worker("reserve", enqueues=["billing.charge"])
    async def reserve(ctx: Context, job: dict[str, Any]) -> None: ...

    @reserve.on_dead_letter(enqueues=["alert"])
    async def undo(ctx: Context, job: Any, error: BaseException) -> None: ...

    @svc.queue_worker("alert")
    async def alert(ctx: Context, job: dict[str, Any]) -> None: ...

    @svc.queue_worker("lonely")
    async def lonely(ctx: Context, job: dict[str, Any]) -> None: ...

    @svc.command("place", emits=["order_placed"], enqueues=["reserve"])
    async def place(ctx: Context, cmd: dict[str, Any]) -> None: ...

    svc.subscription("never_emitted", enqueue="alert")
    graph = build_graph(App([svc], backend="memory://", external_queues=["billing.charge"]).registry)
    lines = {line.strip() for line in graph.mermaid.splitlines()}
    assert {
        'queue_lonely["lonely"]',  # no edge, still drawn
        'event_never_emitted(["never_emitted"])',
        'external_billing_charge[["billing.charge"]]',
        "event_order_placed --> queue_on_order",
        "queue_on_order -- enqueue --> queue_reserve",
        "queue_reserve -- enqueue --> external_billing_charge",
        "queue_reserve -. dead letter .-> queue_alert",
        "command_place -- enqueue --> queue_reserve",
    } <= lines
    assert graph.warnings == [
        "queue 'lonely' is not fed by any subscription, schedule or declared enqueue "
        "(only app.enqueue, or a ctx.enqueue of a handler that declares no enqueues=[...], can reach it)"
    ]


def test_an_enqueue_to_a_queue_nobody_works_is_a_warning() -> None:
    svc = Service("svc")

    @svc.queue_worker("first", enqueues=["nowhere"])
    async def first(ctx: Context, job: dict[str, Any]) -> None: ...

    warnings = build_graph(App([svc], backend="memory://").registry).warnings
    assert any("'nowhere', which no service of this app works" in w for w in warnings)
