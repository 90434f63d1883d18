"""The ASGI app of ``conveyor serve``: the HTTP API, its OpenAPI document and the dashboard.

>>> # api = create_app(app, tokens={"s3cret-operator-token": "operate"})
>>> # uvicorn.run(api, host="127.0.0.1", port=8080)

Mounted inside a user's own FastAPI or Starlette app (``outer.mount("/conveyor", api)``), the
inner app's lifespan does not run: the conveyor App connects on the first request, and the
user's lifespan should ``async with app:`` to close it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

from fastapi import FastAPI

from conveyor.app import App
from conveyor.server import api, problems
from conveyor.server.auth import Auth, Role
from conveyor.server.connection import Connection
from conveyor.server.dashboard import dashboard_app

logger = logging.getLogger("conveyor.server")


def create_app(
    app: App,
    *,
    tokens: Mapping[str, str | Role] | None = None,
    dashboard: bool = True,
    title: str = "conveyor",
) -> FastAPI:
    """The HTTP API (and, with ``dashboard``, the dashboard at ``/ui``) of ``app``.

    ``tokens`` maps bearer tokens to roles (``read``, ``operate``, ``admin``: see
    :mod:`conveyor.server.auth`); with none every caller is an admin, so bind to loopback only.
    """
    auth = Auth(tokens)
    connection = Connection(app)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await connection.ensure()
        try:
            yield
        finally:
            await connection.close()

    server = FastAPI(
        title=title,
        summary="Commands, workflows, queues, jobs and dead letters of a conveyor app",
        version=_version(),
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    server.state.conveyor = connection
    server.state.auth = auth
    problems.install(server)
    server.include_router(api.router(connection, auth))
    if dashboard:
        server.mount("/ui", dashboard_app(connection, auth))
    return server


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("conveyor")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "0"
