"""Running the server: uvicorn on one address, optionally with the app's workers in the same loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import uvicorn

from conveyor.app import App
from conveyor.model.errors import ConfigurationError
from conveyor.runtime.loop import SignalStop
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
    too. ``started`` is called with the base URL.

    The first signal stops the server (open requests finish) and then the workers gracefully; a
    second one cuts both short (see :class:`~conveyor.runtime.loop.SignalStop`). uvicorn's own
    signal handling is left out: it re-raises the signal once it has stopped, which would cancel
    the workers' graceful stop and end the process with a KeyboardInterrupt.
    """
    check_bind(host, tokens)
    api = create_app(app, tokens=tokens)
    config = uvicorn.Config(api, host=host, port=port, log_level=log_level, access_log=False, lifespan="on")
    server = _Server(config)
    await SignalStop(_Stopping(server, app)).run(_serve(app, server, host, port, workers, started))


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers (conveyor's :class:`SignalStop` has them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class _Stopping:
    """What a signal stops: the server first; a second signal the workers' running jobs too."""

    server: uvicorn.Server
    app: App

    def stop(self, *, now: bool = False) -> None:
        self.server.should_exit = True
        if now:
            self.server.force_exit = True
            self.app.stop(now=True)


async def _serve(
    app: App,
    server: uvicorn.Server,
    host: str,
    port: int,
    workers: bool,
    started: Callable[[str], None] | None,
) -> None:
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
