"""``conveyor worker``: work APP's queues, optionally serving Prometheus metrics."""

from __future__ import annotations

import click

from conveyor.cli.common import load_app
from conveyor.settings import load_settings


@click.command()
@click.argument("app_spec", metavar="APP")
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=None,
    help="jobs run at once  [default: the app's WorkerConfig, else CONVEYOR_CONCURRENCY, else 50]",
)
@click.option("--queues", "-q", default=None, help="comma-separated queues to work (default: all)")
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="serve Prometheus metrics on this port  [default: CONVEYOR_METRICS_PORT, else none]",
)
@click.option(
    "--metrics-host",
    default=None,
    help="address of the metrics endpoint (0.0.0.0: every interface, so anyone who reaches the "
    "host reads queue names and depths)  [default: CONVEYOR_METRICS_HOST, else 127.0.0.1]",
)
def worker(
    app_spec: str,
    concurrency: int | None,
    queues: str | None,
    metrics_port: int | None,
    metrics_host: str | None,
) -> None:
    """Work APP's queues and fire its schedules until SIGTERM (graceful) or a second SIGINT.

    Logs at INFO unless --log-level (or CONVEYOR_LOG_LEVEL) says otherwise.
    """
    settings = load_settings(metrics_port=metrics_port, metrics_host=metrics_host)
    app = load_app(app_spec)
    if settings.metrics_port is not None:
        serve_prometheus(settings.metrics_host, settings.metrics_port, app.name)
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
