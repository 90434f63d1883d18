"""How the dashboard's pages are rendered: the Jinja2 templates beside this module, what every page
knows (who is looking, their CSRF token, what their role may do), and the formats of times."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.templating import Jinja2Templates

from conveyor.app import App
from conveyor.server.auth import Auth, Principal, Role
from conveyor.server.connection import Connection

HERE = Path(__file__).parent

templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
)


def when(at: float | None) -> str:
    """A timestamp as UTC, to the second."""
    if at is None:
        return "—"
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def clock(at: float | None) -> str:
    """A timestamp's time of day, UTC (the page says the date)."""
    return "—" if at is None else dt.datetime.fromtimestamp(at, dt.UTC).strftime("%H:%M:%S")


def took(seconds: float | None) -> str:
    """A duration the way a person reads it: 850 ms, 4.2 s, 3 min 10 s, 2 h 5 min."""
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    return f"{minutes // 60} h {minutes % 60} min"


def detail(value: Any) -> str:
    """A history entry's detail, its times and durations in the formats above."""
    if not isinstance(value, Mapping):
        return "" if value is None else str(value)
    parts = []
    for key, item in value.items():
        shown = item
        if key == "duration" and isinstance(item, int | float):
            shown = took(item)
        elif (key.endswith("_at") or key == "deadline") and isinstance(item, int | float):
            shown = when(item)
        parts.append(f"{key.replace('_', ' ')}: {shown}")
    return "; ".join(parts)


templates.env.filters["when"] = when
templates.env.filters["took"] = took
templates.env.filters["clock"] = clock
templates.env.filters["detail"] = detail


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who looks at a page: what the page shows them and the token its forms carry."""

    principal: Principal
    csrf: str
    login: bool
    """Whether tokens are configured (so there is a login and a logout)."""

    @property
    def can_operate(self) -> bool:
        return self.principal.role.allows(Role.OPERATE)

    @property
    def can_admin(self) -> bool:
        return self.principal.role.allows(Role.ADMIN)


def base(request: Request) -> str:
    """The dashboard's own path (``/ui``, or deeper when the API is mounted in a user's app)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def back_to(request: Request, path: str, **query: Any) -> RedirectResponse:
    """After a form's action: see the page that shows its outcome (303, so a reload does not repeat it)."""
    given = {key: value for key, value in query.items() if value not in (None, "")}
    url = base(request) + path + (f"?{urlencode(given)}" if given else "")
    return RedirectResponse(url, status_code=303)


@dataclass(frozen=True, slots=True)
class Live:
    """How the pages' live updates stream: a fragment every ``interval`` seconds (when it changed),
    ``events`` of them per connection; then the stream ends and the browser reconnects, so no
    connection is held for ever (and a server stopping waits for none for long)."""

    interval: float = 2.0
    events: int = 150


class Dashboard:
    """What every route of the dashboard needs: the App, the auth, how to render a page."""

    def __init__(self, connection: Connection, auth: Auth, live: Live) -> None:
        self.connection = connection
        self.auth = auth
        self.live = live
        self.streams = 0
        """Live streams open now."""

    async def app(self) -> App:
        return await self.connection.ensure()

    def page(
        self,
        request: Request,
        principal: Principal | None,
        template: str,
        context: Mapping[str, Any],
        *,
        status: int = 200,
    ) -> HTMLResponse:
        """``template`` rendered for ``principal`` (None: nobody is logged in yet)."""
        return templates.TemplateResponse(
            request, template, self.context(request, principal, context), status_code=status
        )

    def fragment(
        self, request: Request, principal: Principal, template: str, context: Mapping[str, Any]
    ) -> str:
        """A part of a page as HTML text, for the live stream."""
        return templates.get_template(template).render(self.context(request, principal, context))

    def context(
        self, request: Request, principal: Principal | None, context: Mapping[str, Any]
    ) -> dict[str, Any]:
        viewer = None
        if principal is not None:
            viewer = Viewer(principal, self.auth.csrf_token(principal), self.auth.enabled)
        return {"request": request, "ui": base(request), "viewer": viewer, **context}
