"""Running the server: uvicorn on one address, optionally with the app's workers in the same loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from conveyor.app import App
from conveyor.model.errors import ConfigurationError
from conveyor.server.asgi import create_app
from conveyor.server.auth import Role, is_loopback

logger = logging.getLogger("conveyor.server")


def check_bind(host: str, tokens: Mapping[str, str | Role] | None) -> None:
    """Refuse to serve an open API (no token) on any address but loopback."""
    if not tokens and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to serve on {host} with no API token: anyone who reaches it could purge and "
            "enqueue. Set CONVEYOR_API_TOKENS (e.g. 'a-long-random-token:admin') or bind 127.0.0.1"
        )


async def serve_http(
    app: App,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    tokens: Mapping[str, str | Role] | None = None,
    workers: bool = False,
    started: Callable[[str], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve the API and dashboard until SIGINT/SIGTERM; with ``workers``, work the app's queues
    too (stopped gracefully after the server). ``started`` is called with the base URL."""
    import uvicorn

    check_bind(host, tokens)
    api = create_app(app, tokens=tokens)
    config = uvicorn.Config(api, host=host, port=port, log_level=log_level, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    working: asyncio.Task[None] | None = None
    async with app:
        if workers:
            ready = asyncio.Event()
            working = asyncio.create_task(app.serve(ready=ready), name="conveyor-workers")
            await asyncio.wait(
                {working, asyncio.ensure_future(ready.wait())}, return_when=asyncio.FIRST_COMPLETED
            )
            if working.done():
                working.result()
        serving = asyncio.create_task(server.serve(), name="conveyor-http")
        while not server.started and not serving.done():  # noqa: ASYNC110 (uvicorn has a flag, no event)
            await asyncio.sleep(0.02)
        if server.started and started is not None:
            bound = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
            started(f"http://{_url_host(host)}:{bound}")
        try:
            await serving
        finally:
            if working is not None:
                app.stop()
                with contextlib.suppress(asyncio.CancelledError):
                    await working


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
