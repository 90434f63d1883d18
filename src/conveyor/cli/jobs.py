"""``conveyor enqueue`` and ``conveyor emit``: put one job or one event in."""

from __future__ import annotations

import click

from conveyor.cli.common import load_app, parse_json, run


@click.command()
@click.argument("app_spec", metavar="APP")
@click.argument("queue")
@click.argument("payload", default="{}")
@click.option("--delay", type=float, default=None, help="seconds before the job is available")
@click.option("--key", "idempotency_key", default=None, help="idempotency key")
@click.option("--correlation-id", default=None, help="workflow instance id")
@click.option(
    "--priority", type=click.IntRange(-10, 10), default=0, show_default=True, help="higher runs first"
)
@click.option("--max-attempts", type=click.IntRange(min=1), default=None, help="in place of the queue's")
@click.option("--visibility-timeout", type=float, default=None, help="lease seconds, in place of the queue's")
@click.option(
    "--external",
    is_flag=True,
    help="QUEUE is served by another app: enqueue although APP does not declare it",
)
def enqueue(
    app_spec: str,
    queue: str,
    payload: str,
    delay: float | None,
    idempotency_key: str | None,
    correlation_id: str | None,
    priority: int,
    max_attempts: int | None,
    visibility_timeout: float | None,
    external: bool,
) -> None:
    """Enqueue one job: conveyor enqueue APP QUEUE '{"order_id": "42"}'.

    QUEUE must be declared by a service of APP or named in its external_queues; --external
    enqueues into a queue another app serves.
    """
    app = load_app(app_spec)
    data = parse_json(payload)

    async def go() -> str:
        async with app:
            return await app.enqueue(
                queue,
                data,
                delay=delay,
                idempotency_key=idempotency_key,
                correlation_id=correlation_id,
                external=external,
                priority=priority,
                max_attempts=max_attempts,
                visibility_timeout=visibility_timeout,
            )

    click.echo(run(go))


@click.command()
@click.argument("app_spec", metavar="APP")
@click.argument("event")
@click.argument("payload", default="{}")
@click.option("--correlation-id", default=None, help="workflow instance id")
def emit(app_spec: str, event: str, payload: str, correlation_id: str | None) -> None:
    """Emit one event to its subscriptions."""
    app = load_app(app_spec)
    data = parse_json(payload)

    async def go() -> str:
        async with app:
            return await app.emit(event, data, correlation_id=correlation_id)

    click.echo(run(go))
