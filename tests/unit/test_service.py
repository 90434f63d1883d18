"""Service definitions: names, payload inference, declared emits, schedules, registry checks."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from conveyor import App, Context, Service
from conveyor.model.errors import ConfigurationError, UnknownCommandError, UnknownQueueError


class Order(BaseModel):
    order_id: str


def test_payload_model_is_taken_from_the_handler_annotation() -> None:
    svc = Service("svc")

    @svc.queue_worker("typed")
    async def typed(ctx: Context, job: Order) -> None: ...

    assert svc.definitions["typed"].payload is Order


def test_queue_worker_stays_callable_as_a_plain_function() -> None:
    svc = Service("svc")
    calls = []

    @svc.queue_worker("plain")
    async def plain(ctx: Any, job: Any) -> str:
        calls.append(job)
        return "ok"

    import asyncio

    assert asyncio.run(plain(None, {"x": 1})) == "ok" and calls == [{"x": 1}]


@pytest.mark.parametrize("name", ["CamelCase", "with-dash", "1starts_with_digit", ""])
def test_names_must_be_snake_case(name: str) -> None:
    with pytest.raises(ConfigurationError, match="snake_case"):
        Service("svc").queue_worker(name)


def test_a_queue_defined_twice_is_refused() -> None:
    svc = Service("svc")

    @svc.queue_worker("twice")
    async def first(ctx: Context, job: Any) -> None: ...

    with pytest.raises(ConfigurationError, match="already defines"):

        @svc.queue_worker("twice")
        async def second(ctx: Context, job: Any) -> None: ...


def test_two_services_defining_one_queue_are_refused_by_the_app() -> None:
    a, b = Service("a"), Service("b")
    for svc in (a, b):

        @svc.queue_worker("shared")
        async def handler(ctx: Context, job: Any) -> None: ...

    with pytest.raises(ConfigurationError, match="defined by services 'a' and 'b'"):
        App([a, b], backend="memory://")


def test_subscription_shortcut_registers_a_route_and_handler_form_a_queue() -> None:
    svc = Service("svc")
    svc.subscription("order_placed", enqueue="validate")

    @svc.subscription("order_placed")
    async def audit(ctx: Context, event: Order) -> None: ...

    assert [(r.event, r.queue) for r in svc.routes] == [
        ("order_placed", "validate"),
        ("order_placed", "audit"),
    ]
    assert svc.definitions["audit"].kind == "subscription" and svc.definitions["audit"].payload is Order


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of cron= or every="),
        ({"cron": "0 2 * * *", "every": 60}, "exactly one of cron= or every="),
        ({"cron": "not a cron"}, "invalid cron"),
        ({"cron": "0 2 * * *", "tz": "Mars/Olympus"}, "unknown time zone"),
        ({"every": 60, "catch_up": "sometimes"}, "catch_up"),
        ({"every": 0}, "positive"),
    ],
)
def test_schedule_configuration_errors_are_clear(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Service("svc").schedule("tick", **kwargs)


def test_unknown_queue_and_command_are_clear_errors() -> None:
    app = App([Service("svc")], backend="memory://")
    with pytest.raises(UnknownQueueError, match="queue 'nope'"):
        app.registry.queue("nope")
    with pytest.raises(UnknownCommandError, match="command 'nope'"):
        app.registry.command("nope")


def test_unknown_backend_scheme_is_refused_and_there_is_no_per_role_backend() -> None:
    with pytest.raises(ConfigurationError, match="unknown backend URL scheme 'kafka'"):
        App([Service("svc")], backend="kafka://localhost")
    with pytest.raises(ConfigurationError, match=r"RabbitMQ backend .* is not available"):
        App([Service("svc")], backend="amqp://127.0.0.1:5672")
    with pytest.raises(TypeError, match="unexpected keyword argument 'events'"):
        App([Service("svc")], backend="memory://", **{"events": "memory://"})


def test_a_queues_dead_letter_event_is_drawn_as_a_dead_letter_edge() -> None:
    from conveyor.operations.graph import build_graph

    svc = Service("shop")

    @svc.queue_worker("charge", dead_letter_event="charge_failed")
    async def charge(ctx: Context, job: dict[str, Any]) -> None: ...

    @svc.subscription("charge_failed")
    async def alert(ctx: Context, event: dict[str, Any]) -> None: ...

    graph = build_graph(App([svc], backend="memory://").registry)
    assert "queue_charge -. dead letter .-> event_charge_failed" in graph.mermaid
    assert not any("charge_failed" in warning for warning in graph.warnings)
