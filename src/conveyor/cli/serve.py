"""``conveyor serve``: the HTTP API with its OpenAPI document, and the dashboard."""

from __future__ import annotations

from typing import Any

import click

from conveyor.cli.common import load_app, run


@click.command()
@click.argument("app_spec", metavar="APP")
@click.option(
    "--host", default="127.0.0.1", show_default=True, envvar="CONVEYOR_SERVE_HOST", show_envvar=True
)
@click.option(
    "--port", type=int, default=8080, show_default=True, envvar="CONVEYOR_SERVE_PORT", show_envvar=True
)
@click.option("--workers", "with_workers", is_flag=True, help="also work APP's queues in this process")
def serve(app_spec: str, host: str, port: int, with_workers: bool) -> None:
    """Serve APP's HTTP API (OpenAPI at /openapi.json, docs at /docs) and dashboard (/ui).

    Tokens and roles come from CONVEYOR_API_TOKENS; with none, only a loopback address is served.
    Needs the serve extra: pip install 'conveyor[serve]'.
    """
    tokens = api_tokens()
    app = load_app(app_spec)

    def started(url: str) -> None:
        click.echo(f"conveyor serve: {url}/ui  (API {url}/docs)", err=True)

    serve_http = server_runner()
    run(lambda: serve_http(app, host=host, port=port, tokens=tokens, workers=with_workers, started=started))


def server_runner() -> Any:
    """``conveyor.server.run.serve_http``, or a clear error when the serve extra is not installed."""
    try:
        from conveyor.server.run import serve_http
    except ImportError as exc:
        raise click.ClickException(
            f"the HTTP API needs the serve extra ({exc.name} is missing): pip install 'conveyor[serve]'"
        ) from exc
    return serve_http


def api_tokens() -> dict[str, str]:
    """The API tokens from CONVEYOR_API_TOKENS: JSON ``{"token": "role"}`` or ``token:role,...``."""
    import os

    import orjson

    text = os.environ.get("CONVEYOR_API_TOKENS", "").strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise click.BadParameter(f"CONVEYOR_API_TOKENS is not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise click.BadParameter('CONVEYOR_API_TOKENS must map tokens to roles: {"token": "admin"}')
        return {str(k): str(v) for k, v in value.items()}
    tokens = {}
    for item in text.split(","):
        token, sep, role = item.strip().rpartition(":")
        if not sep or not token:
            raise click.BadParameter("CONVEYOR_API_TOKENS items are token:role (read, operate or admin)")
        tokens[token] = role
    return tokens
