"""A conveyor server on a free loopback port, in a thread of its own, for tests that need a real
HTTP server (schemathesis, the browser)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import uvicorn

from conveyor import App
from conveyor.server import create_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def live_server(app: App, *, tokens: Mapping[str, str] | None = None, workers: bool = False) -> Iterator[str]:
    """Serve ``app`` (and, with ``workers``, work its queues) until the block ends; yields the URL."""
    port = free_port()
    config = uvicorn.Config(
        create_app(app, tokens=tokens), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    failure: list[BaseException] = []

    async def main() -> None:
        if not workers:
            await server.serve()
            return
        async with app.serving():
            await server.serve()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the test below
            failure.append(exc)

    thread = threading.Thread(target=run, name="conveyor-live-server", daemon=True)
    thread.start()
    ready = threading.Event()
    for _ in range(500):  # the server starts in well under a second; give it 10 s
        if server.started or failure or not thread.is_alive():
            break
        ready.wait(0.02)
    if not server.started:
        raise RuntimeError(f"the test server did not start: {failure}")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        if failure:
            raise failure[0]
