"""``conveyor serve``: the HTTP API with its OpenAPI document, and the dashboard."""

from __future__ import annotations

from typing import Any

import click

from conveyor.cli.common import load_app, run
from conveyor.settings import load_settings


@click.command()
@click.argument("app_spec", metavar="APP")
@click.option(
    "--host", default=None, help="the address to listen on  [default: CONVEYOR_SERVE_HOST, else 127.0.0.1]"
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="the port to listen on  [default: CONVEYOR_SERVE_PORT, else 8080]",
)
@click.option("--workers", "with_workers", is_flag=True, help="also work APP's queues in this process")
def serve(app_spec: str, host: str | None, port: int | None, with_workers: bool) -> None:
    """Serve APP's HTTP API (OpenAPI at /openapi.json, docs at /docs) and dashboard (/ui).

    Tokens and roles come from CONVEYOR_API_TOKENS (token:role,token:role; roles read, operate,
    admin); with none, only a loopback address is served. Needs the serve extra:
    pip install 'conveyor[serve]'.
    """
    settings = load_settings(serve_host=host, serve_port=port)
    tokens = settings.token_roles()
    app = load_app(app_spec)

    def started(url: str) -> None:
        click.echo(f"conveyor serve: {url}/ui  (API {url}/docs)", err=True)

    serve_http = server_runner()
    run(
        lambda: serve_http(
            app,
            host=settings.serve_host,
            port=settings.serve_port,
            tokens=tokens,
            workers=with_workers,
            started=started,
        )
    )


def server_runner() -> Any:
    """``conveyor.server.run.serve_http``, or a clear error when the serve extra is not installed."""
    try:
        from conveyor.server.run import serve_http
    except ImportError as exc:
        raise click.ClickException(
            f"the HTTP API needs the serve extra ({exc.name} is missing): pip install 'conveyor[serve]'"
        ) from exc
    return serve_http
