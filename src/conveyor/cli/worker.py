"""``conveyor worker``: work APP's queues, optionally serving Prometheus metrics."""

from __future__ import annotations

import click

from conveyor.cli.common import load_app


@click.command()
@click.argument("app_spec", metavar="APP")
@click.option("--concurrency", "-c", type=int, default=None, help="jobs run at once")
@click.option("--queues", "-q", default=None, help="comma-separated queues to work (default: all)")
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    envvar="CONVEYOR_METRICS_PORT",
    show_envvar=True,
    help="serve Prometheus metrics on this port",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    envvar="CONVEYOR_METRICS_HOST",
    show_envvar=True,
    help="address of the metrics endpoint (0.0.0.0: every interface, so anyone who reaches the "
    "host reads queue names and depths)",
)
def worker(
    app_spec: str, concurrency: int | None, queues: str | None, metrics_port: int | None, metrics_host: str
) -> None:
    """Work APP's queues and fire its schedules until SIGTERM (graceful) or a second SIGINT."""
    import logging

    if logging.getLogger("conveyor").level > logging.INFO:
        logging.getLogger("conveyor").setLevel(logging.INFO)
    app = load_app(app_spec)
    if metrics_port is not None:
        serve_prometheus(metrics_host, metrics_port, app.name)
    names = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    app.run(queues=names, concurrency=concurrency)  # a ConveyorError ends it as every command's does


def serve_prometheus(host: str, port: int, service_name: str) -> None:
    """Install an OpenTelemetry SDK meter provider (``service.name``: ``service_name``) exporting to
    a Prometheus endpoint."""
    try:
        from opentelemetry import metrics
        from prometheus_client import start_http_server

        from conveyor.observability.metrics import prometheus_meter_provider

        provider = prometheus_meter_provider(service_name)
    except ImportError as exc:
        raise click.ClickException(
            "--metrics-port needs the OpenTelemetry SDK and its Prometheus exporter: "
            f"pip install 'conveyor[otel]' ({exc})"
        ) from exc
    try:
        start_http_server(port, addr=host)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise click.ClickException(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    metrics.set_meter_provider(provider)
    click.echo(f"metrics: http://{host}:{port}/metrics", err=True)
