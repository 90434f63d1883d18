"""The dashboard: server-rendered pages with htmx (vendored), at ``/ui`` of ``conveyor serve``.

Overview (queues, throughput, workers, live), workflows (a filtered list, an instance's timeline and
graph, approvals), dead letters (inspect, redrive, purge, each confirmed with its count) and queues
(pause, resume, leases). Its own ASGI app, mounted by :func:`conveyor.server.create_app`, so its
errors are pages, not problem documents. Every form carries the CSRF token of
:mod:`conveyor.server.auth`; a page shows only the buttons its viewer's role may press, and the
routes check the role again. Every action is in the audit log.

``static/htmx.min.js`` is htmx 2.0.11 as npm's ``htmx.org`` package ships it (``dist/htmx.min.js``,
0BSD: ``static/htmx.LICENSE``); ``static/live.js`` applies the live stream of :mod:`.events`.
"""

from __future__ import annotations

from http import HTTPStatus
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor.model.errors import ConveyorError
from conveyor.server.auth import Auth
from conveyor.server.connection import Connection
from conveyor.server.dashboard import dead_letters, events, login, overview, queues, workflows
from conveyor.server.dashboard.render import HERE, Dashboard, Live, base
from conveyor.server.problems import Problem, status_of

__all__ = ["Live", "dashboard_app"]


def dashboard_app(connection: Connection, auth: Auth, *, live: Live | None = None) -> FastAPI:
    """The dashboard's ASGI app, to mount (at ``/ui`` in ``create_app``)."""
    dashboard = Dashboard(connection, auth, live or Live())
    ui = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    ui.state.dashboard = dashboard
    ui.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    for module in (overview, events, workflows, dead_letters, queues, login):
        ui.include_router(module.routes(dashboard))

    def error(request: Request, status: int, detail: str) -> HTMLResponse:
        context = {"status": status, "title": HTTPStatus(status).phrase, "detail": detail}
        return dashboard.page(request, None, "error.html", context, status=status)

    @ui.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> Response:
        if exc.status == 401 and request.method in ("GET", "HEAD"):
            wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{base(request)}/login?next={quote(wanted)}", status_code=303)
        return error(request, exc.status, exc.detail)

    @ui.exception_handler(ConveyorError)
    async def _conveyor(request: Request, exc: ConveyorError) -> Response:
        return error(request, status_of(exc), str(exc))

    @ui.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        where = "; ".join(
            f"{'.'.join(str(part) for part in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()[:5]
        )
        return error(request, 422, f"the request is invalid: {where}")

    @ui.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return error(request, exc.status_code, detail)

    return ui
